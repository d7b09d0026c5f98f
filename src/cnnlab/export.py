"""ONNX export with ``onnx.checker`` and an onnxruntime-vs-PyTorch parity check.

The exported graph takes pixels in [0, 1] with a dynamic batch axis and returns logits
(see ``checkpoint.InferenceModel``); its metadata holds the model card (``modelcard.py``). Parity runs over a whole split in fp32; the export
fails, and nothing gets registered, when the max |logit difference| or the argmax
agreement misses the thresholds in ``params.yaml`` (``export`` section).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .hashing import file_digest


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree beyond the configured tolerance."""


@dataclass
class ParityReport:
    samples: int
    max_abs_diff: float
    argmax_agreement: float
    max_abs_diff_limit: float
    min_argmax_agreement: float
    passed: bool
    onnx_sha256: str  # the file checked: register refuses any other

    def to_dict(self) -> dict:
        return asdict(self)


def export_onnx(module: nn.Module, input_shape: tuple[int, int, int], path: Path, opset: int = 18,
                metadata: dict[str, str] | None = None) -> Path:
    """Write ``path`` as one self-contained ``.onnx`` file, with ``metadata`` as its metadata_props
    (the model card ``cnnlab predict`` reads), and run the ONNX checker on it."""
    import onnx

    module = module.eval().float()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, *input_shape)
    torch.onnx.export(
        module, (example,), str(path), input_names=["images"], output_names=["logits"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
        opset_version=opset, dynamo=True, external_data=False, verbose=False,
    )
    model = onnx.load(str(path))
    if metadata:
        onnx.helper.set_model_props(model, metadata)
        onnx.save(model, str(path))
    onnx.checker.check_model(model, full_check=True)
    return path


@torch.no_grad()
def onnx_parity(module: nn.Module, onnx_path: Path, images: torch.Tensor, max_abs_diff: float,
                min_argmax_agreement: float, batch_size: int = 1000) -> ParityReport:
    """Compare fp32 PyTorch logits with onnxruntime's on ``images`` (uint8 NCHW)."""
    import onnxruntime as ort

    module = module.eval().float()
    checked = file_digest(onnx_path)  # hashed before it is read, so the hash names the bytes checked
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst, agree = 0.0, 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].float() / 255.0
        expected = module(batch).numpy()
        actual = session.run(["logits"], {"images": batch.numpy()})[0]
        worst = max(worst, float(np.abs(expected - actual).max()))
        agree += int((expected.argmax(1) == actual.argmax(1)).sum())
    agreement = agree / len(images)
    passed = worst <= max_abs_diff and agreement >= min_argmax_agreement
    return ParityReport(len(images), worst, agreement, max_abs_diff, min_argmax_agreement, passed, checked)
