"""The comparison with the catalogue's reference figures: one row per experiment.

Reads only what the stages wrote (``outputs/<experiment>/eval.json``, ``seeds.json``,
``train_metrics.json``); an experiment with no results is reported as "not run: <why>".

    cnnlab compare            # writes outputs/comparison.{json,md}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import Config
from .contract import StudyFiles


@dataclass
class Row:
    experiment: str
    dataset: str
    metric: str
    reference: float | None
    mean: float | None
    std: float | None
    runs: int
    parameters: int | None
    wall_seconds: float | None
    verdict: str
    note: str = ""
    group: str = ""


def verdict(reference: float | None, mean: float | None, tolerance: float) -> str:
    if mean is None:
        return "not run"
    if reference is None:
        return "no reference"
    if mean > reference + tolerance:
        return "beats"
    if mean >= reference - tolerance:
        return "matches"
    return "below"


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def experiment_row(config: Config, catalogue_reference: dict[str, Any], tolerance: float,
                   why_missing: Callable[[str], str]) -> Row:
    out = config.output_dir
    reference = catalogue_reference.get("test_accuracy")
    seeds, evaluation, train = _read(out / "seeds.json"), _read(out / "eval.json"), _read(out / "train_metrics.json")
    ref_dataset = catalogue_reference.get("dataset", config.data.name)
    note = f"ran on {config.data.name}; reference is {ref_dataset}" if ref_dataset != config.data.name else ""
    # A search's result is its winner retrained with every seed (`cnnlab retrain-best`).
    if config.experiment == config.search.study and not seeds:
        seeds = _read(StudyFiles.of(config).winner_seeds)
        if seeds:
            note = (note + "; " if note else "") + "search winner retrained"
    if seeds:
        mean, std, runs = seeds["test_accuracy_mean"], seeds["test_accuracy_std"], len(seeds["runs"])
        wall = seeds["wall_seconds_mean"]
        parameters = total_parameters(seeds)
    elif evaluation:
        mean, std, runs = evaluation["test_accuracy"], None, 1
        wall = train["wall_seconds"] if train else None
        parameters = total_parameters(evaluation)
    else:
        mean = std = wall = parameters = None
        runs = 0
        note = why_missing(config.data.name) or f"no results in {out}; run its stages"
    if train and train.get("data_embedded"):
        note = (note + "; " if note else "") + "embedded 5k-digit MNIST subset, not the full set"
    return Row(config.experiment, config.data.name, "test_accuracy", reference, mean, std, runs, parameters, wall,
               verdict(reference, mean, tolerance), note, str(catalogue_reference.get("group", "")))


def total_parameters(result: dict[str, Any]) -> int:
    """A results file's total parameter count (files written before the split count say "parameters")."""
    return result.get("total_parameters", result.get("parameters"))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def format_markdown(rows: list[Row], tolerance: float) -> str:
    lines = [
        f"| experiment | data | reference % | ours % (mean ± std, n) | params | wall s | verdict (±{100 * tolerance:.1f} pp) | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        ours = "—" if r.mean is None else (
            f"{_pct(r.mean)} ± {100 * r.std:.2f} (n={r.runs})" if r.std is not None else f"{_pct(r.mean)} (n=1)")
        verdict_text = r.verdict if r.mean is not None else f"not run: {r.note}"
        lines.append(f"| {r.experiment} | {r.dataset} | {_pct(r.reference)} | {ours} | "
                     f"{'—' if r.parameters is None else f'{r.parameters:,d}'} | "
                     f"{'—' if r.wall_seconds is None else f'{r.wall_seconds:.0f}'} | {verdict_text} | "
                     f"{r.note if r.mean is not None else ''} |")
    # One table per group and dataset: a group may hold the same study on MNIST and CIFAR-10,
    # whose accuracies do not compare.
    for group, dataset in sorted({(r.group, r.dataset) for r in rows if r.group}):
        members = sorted((r for r in rows if (r.group, r.dataset) == (group, dataset) and r.mean is not None),
                         key=lambda r: -r.mean)
        if len(members) < 2:
            continue
        best = members[0].mean
        lines += ["", f"**{group}** on {dataset}, sorted best → worst (Δ against the best):", "",
                  "| experiment | ours % | Δ pp | reference % |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {r.experiment} | {_pct(r.mean)} | {100 * (r.mean - best):+.2f} | {_pct(r.reference)} |"
                  for r in members]
    return "\n".join(lines) + "\n"
