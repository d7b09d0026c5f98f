"""Model selection on validation only: the one rule every choice of a model goes through.

    best = pick_by_validation(history, "val_accuracy", "val_loss")            # best epoch (fit)
    best = pick_by_validation(runs, "best_val_accuracy", "best_val_loss")     # freeze-sweep k, seed
    best = pick_by_validation(trials, "val_accuracy", loss=None)              # search winner

The highest validation accuracy wins; a tie goes to the lower validation loss, then to the
first candidate (the earliest epoch, the smallest k, the first seed). The tie-break matters on
few-shot runs: with 20 validation images many epochs reach 100%, and the first of them is
often the least trained. Test metrics are reported, never used to choose: a key that does not
name a validation metric is refused, so a selection cannot quietly read one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

Candidate = TypeVar("Candidate", bound=Mapping[str, Any])
VALIDATION_PREFIXES = ("val_", "best_val_")


def require_validation(key: str) -> str:
    if not key.startswith(VALIDATION_PREFIXES):
        raise ValueError(f"model selection reads validation metrics only ({', '.join(VALIDATION_PREFIXES)}...); "
                         f"got {key!r}: test metrics are reported, never used to choose")
    return key


def validation_rank(candidate: Mapping[str, Any], accuracy: str = "val_accuracy",
                    loss: str | None = "val_loss") -> tuple[float, float]:
    """Higher is better: (accuracy, -loss); a candidate without a loss ranks as if it had none."""
    value = candidate[require_validation(accuracy)]
    return (value, -candidate[require_validation(loss)] if loss else 0.0)


def improves(candidate: Mapping[str, Any], incumbent: Mapping[str, Any] | None, accuracy: str = "val_accuracy",
             loss: str | None = "val_loss") -> bool:
    """Whether ``candidate`` beats ``incumbent`` (None: nothing chosen yet) on validation."""
    rank = validation_rank(candidate, accuracy, loss)  # checks the keys even for the first candidate
    return incumbent is None or rank > validation_rank(incumbent, accuracy, loss)


def pick_by_validation(candidates: Iterable[Candidate], accuracy: str = "val_accuracy",
                       loss: str | None = "val_loss") -> Candidate:
    """The candidate with the best validation rank; the first of equals."""
    best = None
    for candidate in candidates:
        if improves(candidate, best, accuracy, loss):
            best = candidate
    if best is None:
        raise ValueError("no candidates to choose from")
    return best


def chosen_seed_run(runs: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The seed to export and register: the best on validation (its test accuracy is reported
    only). Runs recorded before seeds.json kept a validation loss tie on accuracy alone."""
    return pick_by_validation(runs, "best_val_accuracy", "best_val_loss" if "best_val_loss" in runs[0] else None)


def search_winner(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    """The trial a search.json's winner is: the most accurate of its best trials (the Pareto
    front of a two-objective study; the one best trial otherwise)."""
    return pick_by_validation(summary["best"], "val_accuracy", loss=None)
