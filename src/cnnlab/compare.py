"""The comparison with the catalogue's reference figures: one row per experiment.

Reads only what the stages wrote (``outputs/<experiment>/eval.json``, ``seeds.json``,
``train_metrics.json``, ``history.json``); an experiment with no results is reported as
"not run: <why>".

    cnnlab compare            # writes outputs/comparison.{json,md}

A catalogue ``reference:`` names its metric by its key and gives one figure or a range:
``test_accuracy: 0.9814`` or ``best_val_accuracy: [0.7065, 0.72]``; ``dataset:`` where the
reference ran on another dataset than ours, ``derived: true`` where the figure is not reported
but inferred (e.g. "no gain over base"). A row compares like with like:

- the reference's metric against ours: ``best_val_accuracy`` (train_metrics.json, or the mean
  over the seeds in seeds.json) or ``test_accuracy`` (eval.json, or seeds.json);
- a proxy row (our dataset differs from the reference's) goes to its own table, shown beside
  the reference, with no verdict; so does a derived reference ("no verdict: derived reference");
- each row states what ran: epochs, test-time augmentation, a frozen backbone.

Verdicts, with the reference range widened by ``tolerance`` on both sides:

- n >= 3 runs: the 95% Student-t interval of the mean (mean ± t_{0.975, n-1} · std / √n)
  decides: "beats" when it lies wholly above the widened range, "below" wholly below,
  "matches" when it overlaps it;
- n < 3: no interval can be drawn, so a mean inside the widened range "matches" and one
  outside reads "above (n=1)" / "below (n=1)" (n=2 likewise): a direction from one or two
  runs, not a claim that we beat or trail the reference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scipy.stats import t as student_t

from .config import Config
from .contract import EntryResults, RunFiles
from .metrics import mean_std

METRICS = ("test_accuracy", "best_val_accuracy")  # a reference's figure is keyed by its metric
REFERENCE_KEYS = (*METRICS, "dataset", "derived", "group", "source")


@dataclass(frozen=True)
class Reference:
    """A catalogue reference: which metric, its range (low == high for one figure), on which data."""

    metric: str
    low: float
    high: float
    dataset: str
    derived: bool = False

    @classmethod
    def parse(cls, entry: dict[str, Any], run_dataset: str) -> "Reference | None":
        unknown = sorted(set(entry) - set(REFERENCE_KEYS))
        if unknown:
            raise ValueError(f"reference keys {unknown} unknown; valid: {', '.join(REFERENCE_KEYS)}")
        metrics = [m for m in METRICS if m in entry]
        if len(metrics) > 1:
            raise ValueError(f"a reference gives one metric, not {metrics}")
        if not metrics:
            return None
        figure = entry[metrics[0]]
        low, high = (figure, figure) if isinstance(figure, (int, float)) else figure
        if not low <= high:
            raise ValueError(f"reference range {figure} must run low to high")
        return cls(metrics[0], float(low), float(high), entry.get("dataset", run_dataset), bool(entry.get("derived")))


@dataclass
class Row:
    experiment: str
    dataset: str
    metric: str  # what is compared: the reference's metric (test_accuracy when there is none)
    reference: tuple[float, float] | None  # [low, high] of the reference's metric
    mean: float | None
    std: float | None
    runs: int
    parameters: int | None
    wall_seconds: float | None
    verdict: str
    note: str = ""
    group: str = ""
    reference_dataset: str = ""  # "" = ours
    interval: tuple[float, float] | None = None  # 95% interval of the mean, n >= 3
    what_ran: str = ""

    @property
    def proxy(self) -> bool:
        """Ran on another dataset than the reference's: shown beside it, never judged against it."""
        return bool(self.reference_dataset) and self.reference_dataset != self.dataset


def mean_interval(mean: float, std: float, runs: int, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of ``runs`` values with sample std ``std``."""
    half = student_t.ppf(0.5 + level / 2, runs - 1) * std / math.sqrt(runs)
    return mean - half, mean + half


def verdict(reference: tuple[float, float] | None, mean: float | None, std: float | None, runs: int,
            tolerance: float) -> str:
    """Ours against a comparable reference range (module docstring: when each word is used)."""
    if mean is None:
        return "not run"
    if reference is None:
        return "no reference"
    low, high = reference[0] - tolerance, reference[1] + tolerance
    if runs >= 3:
        ours_low, ours_high = mean_interval(mean, std, runs)
        return "beats" if ours_low > high else "below" if ours_high < low else "matches"
    if mean > high:
        return f"above (n={runs})"
    if mean < low:
        return f"below (n={runs})"
    return "matches"


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def what_ran(run: RunFiles, init_from: str = "") -> str:
    """Epochs, test-time augmentation, frozen layers and starting weights, from one run's files."""
    history, evaluation, train = _read(run.history), _read(run.eval), _read(run.train_metrics)
    train, evaluation = train or {}, evaluation or {}
    epochs = len(history) if history else train.get("epochs")
    parts = [f"{epochs} epoch{'s' if epochs != 1 else ''}"] if epochs else []
    # eval.json files written before the key existed predate test-time augmentation: none.
    tta = evaluation.get("test_time_augmentation", "none")
    if tta != "none":
        parts.append(f"TTA {tta}")
    policy = train.get("transfer_policy")
    if train.get("frozen_parameters"):
        parts.append(f"frozen backbone ({policy}, {train['frozen_parameters']:,} params frozen)")
    elif policy == "scratch":
        parts.append("from scratch")
    elif init_from:
        parts.append(f"all layers fine-tuned from {init_from}")
    if train.get("labelled_budget"):  # few-shot: the labels that trained and that chose, in all
        parts.append(f"{train['labelled_budget']} labelled images ({train['train_images']} train + "
                     f"{train['val_images']} validation)")
    return "; ".join(parts)


def experiment_row(config: Config, results: EntryResults | None, catalogue_reference: dict[str, Any],
                   tolerance: float, why_missing: Callable[[str], str]) -> Row:
    """One entry's row, from its declared result files only (``results``; None: it runs nowhere)."""
    reference = Reference.parse(catalogue_reference, config.data.name)
    metric = reference.metric if reference else "test_accuracy"
    seeds = _read(results.seeds) if results and results.seeds else None
    evaluation, train = (_read(results.run.eval), _read(results.run.train_metrics)) if results else (None, None)
    notes = []
    if seeds and results.seeds != results.run.seeds:  # a search's result: its winner retrained with every seed
        notes.append("search winner retrained")
    described = results.described if seeds else results.run if results else None
    if seeds:
        values = [run.get(metric) for run in seeds["runs"]]
        mean, std = mean_std(values) if None not in values else (None, None)
        runs, wall, parameters = len(values), seeds["wall_seconds_mean"], total_parameters(seeds)
    elif evaluation:
        mean = (evaluation if metric == "test_accuracy" else train or {}).get(metric)
        std, runs = None, 1
        wall = train.get("wall_seconds") if train else None
        parameters = total_parameters(evaluation)
    else:
        mean = std = wall = parameters = None
        runs = 0
        where = f"no results in {config.output_dir}; run its stages" if results else \
            "catalogue.yaml runs it in no pipeline (`pipeline: none`)"
        notes.append(why_missing(config.data.name) or where)
    if reference and reference.derived:
        notes.append("derived reference: inferred, not reported")
    if train and train.get("data_embedded"):
        notes.append("embedded 5k-digit MNIST subset, not the full set")
    figure = (reference.low, reference.high) if reference else None
    interval = mean_interval(mean, std, runs) if mean is not None and runs >= 3 else None
    row = Row(config.experiment, config.data.name, metric, figure, mean, std, runs, parameters, wall,
              verdict(figure, mean, std, runs, tolerance), "; ".join(notes), str(catalogue_reference.get("group", "")),
              catalogue_reference.get("dataset", ""), interval,
              what_ran(described, config.transfer.init_from) if runs else "")
    if runs and mean is None:
        row.verdict = f"no verdict: our results record no {metric}"
    elif runs and row.proxy:
        row.verdict = "proxy: no verdict"
    elif runs and reference and reference.derived:
        row.verdict = "no verdict: derived reference"
    return row


def total_parameters(result: dict[str, Any]) -> int:
    """A results file's total parameter count (files written before the split count say "parameters")."""
    return result.get("total_parameters", result.get("parameters"))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _range(figure: tuple[float, float] | None) -> str:
    if figure is None:
        return "—"
    return _pct(figure[0]) if figure[0] == figure[1] else f"{_pct(figure[0])}–{_pct(figure[1])}"


def _ours(r: Row) -> str:
    if r.mean is None:
        return "—"
    return f"{_pct(r.mean)} ± {100 * r.std:.2f} (n={r.runs})" if r.std is not None else f"{_pct(r.mean)} (n=1)"


def _metric(r: Row) -> str:
    return "best val" if r.metric == "best_val_accuracy" else "test"


def format_markdown(rows: list[Row], tolerance: float) -> str:
    judged, proxies = [r for r in rows if not r.proxy], [r for r in rows if r.proxy]
    lines = [
        f"Same dataset and metric as the reference; verdict with the range widened by ±{100 * tolerance:.1f} pp, "
        "from the 95% interval of the mean when n ≥ 3 (`cnnlab.compare`).", "",
        "| experiment | data | metric | reference % | ours % (mean ± std, n) | 95% interval % | params | wall s "
        "| what ran | verdict | note |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in judged:
        verdict_text = r.verdict if r.mean is not None or r.runs else f"not run: {r.note}"
        lines.append(f"| {r.experiment} | {r.dataset} | {_metric(r)} | {_range(r.reference)} | {_ours(r)} | "
                     f"{'—' if r.interval is None else f'{_pct(r.interval[0])}–{_pct(r.interval[1])}'} | "
                     f"{'—' if r.parameters is None else f'{r.parameters:,d}'} | "
                     f"{'—' if r.wall_seconds is None else f'{r.wall_seconds:.0f}'} | {r.what_ran} | {verdict_text} | "
                     f"{r.note if r.runs else ''} |")
    if proxies:
        lines += ["", "**Proxy runs**: another dataset than the reference's, shown beside it with no verdict.", "",
                  "| experiment | ran on | reference on | metric | reference % | ours % (mean ± std, n) | params "
                  "| what ran | note |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
        lines += [f"| {r.experiment} | {r.dataset} | {r.reference_dataset} | {_metric(r)} | {_range(r.reference)} | "
                  f"{_ours(r) if r.runs else 'not run: ' + r.note} | "
                  f"{'—' if r.parameters is None else f'{r.parameters:,d}'} | {r.what_ran} | "
                  f"{r.note if r.runs else ''} |" for r in proxies]
    # One table per group and dataset: a group may hold the same study on MNIST and CIFAR-10,
    # whose accuracies do not compare.
    for group, dataset in sorted({(r.group, r.dataset) for r in rows if r.group}):
        members = sorted((r for r in rows if (r.group, r.dataset) == (group, dataset) and r.mean is not None),
                         key=lambda r: -r.mean)
        if len(members) < 2:
            continue
        best = members[0].mean
        lines += ["", f"**{group}** on {dataset}, sorted best → worst (Δ against the best):", "",
                  "| experiment | metric | ours % | Δ pp | reference % |", "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {r.experiment} | {_metric(r)} | {_pct(r.mean)} | {100 * (r.mean - best):+.2f} | "
                  f"{_range(r.reference)}{' (' + r.reference_dataset + ')' if r.proxy else ''} |" for r in members]
    return "\n".join(lines) + "\n"


def format_freeze_sweep(sweep: dict[str, Any]) -> str:
    """One freeze sweep (``freeze_sweep.json``) as a Markdown table: every k with its validation
    and test accuracy; k is the one chosen on validation (test is reported, never used to choose)."""
    labels = (f"{sweep['train_samples']:,d} training + {sweep['val_samples']:,d} validation labelled images"
              if "val_samples" in sweep else f"{sweep['train_samples']:,d} training images")
    scratch = sweep["scratch"]
    lines = [f"**{sweep['experiment']}** freeze sweep ({labels}; k of {sweep['layers']} layers frozen, "
             f"k = {sweep['best_k']} chosen on validation):", "",
             "| k frozen | trainable params | best val % | test % | wall s |", "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['freeze_k']}{' (chosen)' if r['freeze_k'] == sweep['best_k'] else ''} | "
              f"{r['trainable_parameters']:,d} | {_pct(r['best_val_accuracy'])} | {_pct(r['test_accuracy'])} | "
              f"{r['wall_seconds']:.0f} |" for r in sweep["runs"]]
    lines.append(f"| from scratch | {scratch['trainable_parameters']:,d} | {_pct(scratch['best_val_accuracy'])} | "
                 f"{_pct(scratch['test_accuracy'])} | {scratch['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"
