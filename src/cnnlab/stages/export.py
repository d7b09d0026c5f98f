"""``cnnlab export``: the best checkpoint as ONNX with its model card (what ``cnnlab predict`` needs),
checked against PyTorch with onnxruntime."""

from __future__ import annotations

from ..checkpoint import inference_model, load_checkpoint
from ..config import Config
from ..contract import RunFiles
from ..data import load_view
from ..export import ParityError, ParityReport, export_onnx, onnx_parity
from ..files import write_json
from ..modelcard import ModelCard
from ..tracking import reopen_run


def export(config: Config) -> ParityReport:
    """The parity record; raises ParityError (after writing it) when parity fails."""
    files = RunFiles.of(config)
    payload = load_checkpoint(files.best)
    module = inference_model(payload)
    data = load_view(files.prepared, config.data)
    # Only the image-folder readers record an image_size: their photos were fitted to it.
    card = ModelCard.for_training(payload, data.name, "image_size" in data.provenance)
    export_onnx(module, tuple(payload["input_shape"]), files.onnx, config.export.opset, card.to_metadata())
    parity = onnx_parity(module, files.onnx, data.x_test, config.export.max_abs_diff,
                         config.export.min_argmax_agreement)
    write_json(files.parity, parity.to_dict())
    tracker = reopen_run(config, files.run_info, "cnnlab export")
    tracker.log_metrics({"onnx_max_abs_diff": parity.max_abs_diff, "onnx_argmax_agreement": parity.argmax_agreement})
    tracker.set_tags({"onnx.parity": "passed" if parity.passed else "failed"})
    tracker.log_artifacts([files.onnx, files.parity], "onnx")
    print(f"ONNX parity on {parity.samples} test images: max |diff| {parity.max_abs_diff:.2e} "
          f"(limit {parity.max_abs_diff_limit:.0e}), argmax agreement {parity.argmax_agreement:.4%}")
    if not parity.passed:
        raise ParityError(f"ONNX parity failed (see {files.parity}); the model is not registered. "
                          "Check for ops that differ between PyTorch and onnxruntime, or relax export.* limits.")
    return parity
