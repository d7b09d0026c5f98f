"""The figures of README.md and docs/RESULTS.md, rendered from the committed files that hold them.

A generated block sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; ``cnnlab
results`` rewrites every block from its files and ``--check`` reports the blocks that differ. Prose
outside the blocks carries no measured figure: ``measured_figures_outside_blocks`` finds any
(a test runs it on both documents), so a number typed by hand cannot go stale unnoticed.
Each renderer names its source files under the block, so a reader can open what backs a number.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any, Callable

from .machines import describe_kind, describe_kinds, one_kind, timed_on_one_kind
from .selection import chosen_seed_run, search_winner
from .training_cost import cost_ceiling

DOCUMENTS = ("README.md", "docs/RESULTS.md")
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# What a measured figure looks like in prose: a decimal percentage, percentage points, a ± spread,
# a decimal ratio, a throughput or a decimal duration. Settings (lr 0.003, 30 epochs, a 20% split)
# do not match.
MEASURED = re.compile(r"\d+\.\d+\s?%|\d+(\.\d+)?\s?pp\b|±\s?\d|\d+\.\d+x\b|\d[\d,]*\s?img/s|\d+\.\d+\s?(min|s|h)\b")


class ResultsError(RuntimeError):
    """A block names a file that is missing, or a document holds an unknown block."""


def _load(root: Path, relative: str) -> Any:
    path = root / relative
    if not path.exists():
        raise ResultsError(f"{relative} is missing: it backs a figure in the docs; re-run the command that "
                           "writes it, or remove the block that cites it")
    return json.loads(path.read_text())


def pct(value: float, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f}%"


def mean_std(values: list[float]) -> str:
    spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{100 * statistics.mean(values):.2f}{spread}% (n={len(values)})"


def _machine(machine: dict[str, Any]) -> str:
    """A result file's ``machine`` (runtime.machine()) in words."""
    threads = machine["torch_threads"]
    return (f"{machine['cpu']} with {threads} thread{'' if threads == 1 else 's'}, native bf16 "
            f"{'present' if machine['native_bf16'] else 'absent'}")


def _sources(*relative: str) -> str:
    return "Source: " + ", ".join(f"`{r}`" for r in relative) + "."


def e1(root: Path) -> str:
    run = "outputs/e1_mnist_simple_cnn"
    seeds, evaluation = _load(root, f"{run}/seeds.json"), _load(root, f"{run}/eval.json")
    train, parity = _load(root, f"{run}/train_metrics.json"), _load(root, f"{run}/onnx_parity.json")
    tests = [r["test_accuracy"] for r in seeds["runs"]]
    vals = [r["best_val_accuracy"] for r in seeds["runs"]]
    rows = [
        ("total parameters", f"{train['total_parameters']:,d}"),
        (f"test accuracy over seeds {', '.join(map(str, seeds['seeds']))} (`cnnlab seeds`)",
         f"**{mean_std(tests)}**: " + ", ".join(pct(t) for t in tests)),
        ("best validation accuracy over those seeds", mean_std(vals)),
        ("wall time per seed (mean)", f"{seeds['wall_seconds_mean']:.0f} s"),
        ("the `dvc repro` run of record: test accuracy (best-validation checkpoint)",
         f"{pct(evaluation['test_accuracy'])}, {evaluation['test_errors']} errors of {evaluation['test_samples']:,d}"),
        ("its best validation accuracy", f"{pct(train['best_val_accuracy'])} at epoch {train['best_epoch']} "
                                         f"of {train['epochs']}"),
        ("its training", f"{train['wall_seconds']:.0f} s, median {train['train_images_per_second']:,.0f} img/s "
                         f"({train['runtime']})"),
        ("ONNX parity on the test set", f"max abs logit diff {parity['max_abs_diff']:.1e}, argmax agreement "
                                        f"{pct(parity['argmax_agreement'])} ({parity['samples']:,d} images)"),
    ]
    return _table(("what", "measured"), rows) + _sources(f"{run}/seeds.json", f"{run}/eval.json",
                                                          f"{run}/train_metrics.json", f"{run}/onnx_parity.json")


# Issue 16's bar for `e1_fast`, met by every seed: test accuracy and seconds of training.
E1_FAST_TARGETS = {"test_accuracy": 0.990, "wall_seconds": 90.0}


def e1_fast(root: Path) -> str:
    seeds = _load(root, "outputs/e1_fast/seeds.json")
    machine, runs = seeds["machine"], seeds["runs"]
    rows = [(str(r["seed"]), pct(r["best_val_accuracy"]), pct(r["test_accuracy"]), f"{r['wall_seconds']:.0f} s",
             "yes" if r["test_accuracy"] >= E1_FAST_TARGETS["test_accuracy"]
             and r["wall_seconds"] <= E1_FAST_TARGETS["wall_seconds"] else "**no**") for r in runs]
    rows.append(("**mean**", mean_std([r["best_val_accuracy"] for r in runs]),
                 f"**{mean_std([r['test_accuracy'] for r in runs])}**", f"{seeds['wall_seconds_mean']:.0f} s", ""))
    head = (f"`e1_fast`: E1's SimpleCNN ({seeds['total_parameters']:,d} parameters) against the target of "
            f"{pct(E1_FAST_TARGETS['test_accuracy'], 1)} test accuracy after at most "
            f"{E1_FAST_TARGETS['wall_seconds']:.0f} s of training, each seed; on {_machine(machine)}.\n\n")
    return head + _table(("seed", "best validation", "test", "training wall time", "meets the target"), rows) \
        + _sources("outputs/e1_fast/seeds.json")


def e1_fast_headline(root: Path) -> str:
    seeds = _load(root, "outputs/e1_fast/seeds.json")
    runs = seeds["runs"]
    return (f"E1 fast (`e1_fast`, same network, one-cycle schedule): **{mean_std([r['test_accuracy'] for r in runs])} "
            f"test accuracy** after {seeds['wall_seconds_mean']:.0f} s of training per seed (slowest "
            f"{max(r['wall_seconds'] for r in runs):.0f} s, lowest {pct(min(r['test_accuracy'] for r in runs))}; "
            f"the target: every seed at least {pct(E1_FAST_TARGETS['test_accuracy'], 1)} within "
            f"{E1_FAST_TARGETS['wall_seconds']:.0f} s) on {_machine(seeds['machine'])}. "
            f"{_sources('outputs/e1_fast/seeds.json')}\n")


def bench(root: Path) -> str:
    result = _load(root, "bench/train_throughput.json")
    machine = result["machine"]
    rows = [(str(i + 1), f"{r['baseline_images_per_second']:,.0f}", f"{r['cnnlab_images_per_second']:,.0f}",
             f"{r['ratio']:.2f}x") for i, r in enumerate(result["repeats"])]
    rows.append(("**median**", f"{result['baseline_median_images_per_second']:,.0f}",
                 f"{result['cnnlab_median_images_per_second']:,.0f}", f"**{result['ratio_of_medians']:.2f}x**"))
    head = (f"{machine['cpu']}, {machine['cores_available']} cores, {machine['torch_threads']} threads, "
            f"native bf16: {'yes' if machine['native_bf16'] else 'no'}, torch {machine['torch']}; "
            f"{result['images_per_measurement']:,d} images per measurement from {result['data_source']}; "
            f"measured {result['measured'][:10]}. Baseline: {result['baseline']}. cnnlab: {result['cnnlab']}. "
            f"Median of the per-repeat ratios: {result['median_of_paired_ratios']:.2f}x.\n\n")
    return head + _table(("repeat", "baseline img/s", "cnnlab img/s", "ratio"), rows) + _sources(
        "bench/train_throughput.json")


def bench_headline(root: Path) -> str:
    result = _load(root, "bench/train_throughput.json")
    machine = result["machine"]
    return (f"Trainer vs a torchvision DataLoader loop (`make bench`): **{result['ratio_of_medians']:.2f}x** "
            f"({result['cnnlab_median_images_per_second']:,.0f} vs {result['baseline_median_images_per_second']:,.0f} "
            f"img/s, medians of {len(result['repeats'])} repeats; {result['cnnlab'].split('runtime ')[-1]}) on "
            f"{_machine(machine)}. {_sources('bench/train_throughput.json')}\n")


def ddp(root: Path) -> str:
    result = _load(root, "bench/ddp_throughput.json")
    cpu, sides = result["cpu"], list(result["sides"])
    rows = [(str(i + 1), *(f"{r[side]:,.0f}" for side in sides), f"{r['ratio']:.2f}x")
            for i, r in enumerate(result["repeats"])]
    rows.append(("**median**", *(f"{result['median_images_per_second'][side]:,.0f}" for side in sides),
                 f"**{result['ratio_of_medians']:.2f}x**"))
    load = result["load_average_1min"]
    head = (f"{cpu['model']}, {cpu['cores_available']} cores, native bf16: {'yes' if cpu['native_bf16'] else 'no'}, "
            f"torch {result['torch']}; {result['workload']['train_images']:,d} training images of E1's SimpleCNN, "
            f"{result['workload']['measured']}; 1-minute load average {load['before']:.2f} before, "
            f"{load['after']:.2f} after; measured {result['measured_at'][:10]}. Median of the per-repeat ratios: "
            f"{result['median_of_paired_ratios']:.2f}x.\n\n")
    return head + _table(("repeat", *(f"{s.replace('_', ' ')} img/s" for s in sides), "ratio"), rows) + _sources(
        "bench/ddp_throughput.json")


def dvc_parser(root: Path) -> str:
    """bench/dvc_yaml_parser.json (`make bench-dvc`): DVC's index with ruamel.yaml's C parser and without."""
    result = _load(root, "bench/dvc_yaml_parser.json")
    medians, sizes = result["median_seconds"], result["dvc_files_bytes"]
    largest = max(sizes, key=sizes.get)
    return (f"`{result['command']}` on this repository, whose largest DVC file is `{largest}` ({sizes[largest]:,d} "
            f"bytes): **{medians['c']:.1f} s** with ruamel.yaml's C parser, {medians['pure_python']:.1f} s with its "
            f"pure-Python one ({result['pure_python_over_c']:.2f}x), medians of {result['repeats']} runs each, in "
            f"turn, on {result['machine']['cpu']}; dvc {result['versions']['dvc']}, measured {result['measured']}. "
            + _sources("bench/dvc_yaml_parser.json") + "\n")


def e1_headline(root: Path) -> str:
    run = "outputs/e1_mnist_simple_cnn"
    seeds, evaluation = _load(root, f"{run}/seeds.json"), _load(root, f"{run}/eval.json")
    train = _load(root, f"{run}/train_metrics.json")
    return (f"E1 on full MNIST over {len(seeds['runs'])} seeds (`cnnlab seeds`): "
            f"**{mean_std([r['test_accuracy'] for r in seeds['runs']])} test accuracy**; the `dvc repro` run of "
            f"record: {pct(evaluation['test_accuracy'])} test ({evaluation['test_errors']} errors), best validation "
            f"{pct(train['best_val_accuracy'])} at epoch {train['best_epoch']}, {train['wall_seconds']:.0f} s of "
            f"training ({train['runtime']}). {_sources(f'{run}/seeds.json', f'{run}/eval.json', f'{run}/train_metrics.json')}\n")


E5_SEARCH = "outputs/e5_search/search.json"
E5_WINNER_SEEDS = "outputs/e5_search_winner/seeds.json"  # `cnnlab retrain-best`


def e5_files(root: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """E5's search.json and its retrained winner's seeds.json; None for the latter until that
    study's winner is retrained (a seeds.json of another parameter count belongs to an earlier
    study, and must not lend this one its accuracy)."""
    search, seeds = _load(root, E5_SEARCH), _load(root, E5_WINNER_SEEDS)
    winner = search_winner(search)["parameters"] if search["best"] else None
    return search, seeds if retrained_parameters(seeds) == winner else None


def retrained_parameters(seeds: dict[str, Any]) -> int:
    return seeds["total_parameters"] if "total_parameters" in seeds else seeds["parameters"]  # older files: "parameters"


E5_TARGETS = {"test_accuracy": 0.91, "hours": 2.5, "gain_pp": 0.5}


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


E5_NOT_RETRAINED = (f"`{E5_WINNER_SEEDS}` belongs to an earlier study, and "
                    "`dvc repro experiments/dvc.yaml:retrain_best-e5_search` brings the study up to date "
                    "(`cnnlab provenance` says whether it is), then retrains its winner")


def e5_headline(root: Path) -> str:
    search, seeds = e5_files(root)
    states = search["states"]
    study = (f"E5 search: {len(search['trials'])} trials ({states['COMPLETE']} complete, {states['PRUNED']} pruned, "
             f"{states['FAIL']} failed) under {search['param_budget']:,d} parameters; ")
    if seeds is None:
        best = search_winner(search)
        return (study + f"the best, trial {best['number']} ({best['parameters']:,d} parameters, "
                f"{pct(best['val_accuracy'])} validation), is the winner, not retrained yet: {E5_NOT_RETRAINED}. "
                f"{_sources(E5_SEARCH)}\n")
    evals = [_load(root, f"outputs/e5_search_winner/seed{r['seed']}/eval.json") for r in seeds["runs"]]
    return (study + f"the winner, {retrained_parameters(seeds):,d} parameters, retrained over {len(evals)} seeds: "
            f"**{mean_std([e['test_accuracy'] for e in evals])} CIFAR-10 test accuracy** with flip TTA, "
            f"{mean_std([e['test_accuracy_without_tta'] for e in evals])} without. "
            f"{_sources(E5_SEARCH, E5_WINNER_SEEDS)}\n")


def e5(root: Path) -> str:
    search, seeds = e5_files(root)
    best = search_winner(search)
    recipe = best.get("training", best["params"])  # trials before the recipe was searched: their params
    widths = "/".join(map(str, best["model_kwargs"]["widths"]))
    lr = recipe.get("lr", recipe.get("sgd_lr"))
    summary = (f"Trials: {len(search['trials'])} — "
               + ", ".join(f"{n} {s.lower()}" for s, n in search["states"].items() if n)
               + f". Winner: trial {best['number']}, {best['model_kwargs']['block_style']} blocks, widths {widths}, "
                 f"{recipe['optimizer']} lr {lr:.3g}, **{best['parameters']:,d} parameters**, "
                 f"{pct(best['val_accuracy'])} validation in the search. " + _importances(search)
               + _compute_budget_by_depth(search))
    if seeds is None:
        return "\n".join([summary, "", f"The winner is not retrained yet: {E5_NOT_RETRAINED}. "
                           + _sources(E5_SEARCH)])
    seed_rows, tests = [], []
    for run in seeds["runs"]:
        folder = f"outputs/e5_search_winner/seed{run['seed']}"
        evaluation, train = _load(root, f"{folder}/eval.json"), _load(root, f"{folder}/train_metrics.json")
        tests.append(evaluation["test_accuracy"])
        seed_rows.append((str(run["seed"]), pct(train["best_val_accuracy"]), pct(evaluation["test_accuracy"]),
                          pct(evaluation["test_accuracy_without_tta"]), f"{train['wall_seconds']:.0f} s"))
    registered = _load(root, "outputs/e5_search_winner/seed{}/registered.json".format(
        chosen_seed_run(seeds["runs"])["seed"]))
    searched_on = search.get("machines") or []  # none in a study from before trials recorded theirs
    total = timed_on_one_kind((search["wall_seconds"], searched_on), (seeds["wall_seconds_total"], [seeds["machine"]]))
    timing = (f"Wall time: the search {search['wall_seconds'] / 3600:.2f} h for {search['epochs_spent']} trial-epochs "
              f"on {describe_kinds(searched_on)}, the retraining "
              f"{seeds['wall_seconds_total'] / 3600:.2f} h ({len(seeds['runs'])} seeds at once) on "
              f"{describe_kind(seeds['machine'])}, "
              + (f"{total / 3600:.2f} h in all against the target of {E5_TARGETS['hours']} h." if total is not None else
                 f"not one machine's time, so not measured against the target of {E5_TARGETS['hours']} h."))
    accuracy = (f"Mean over the seeds: {mean_std(tests)} test against the target of >= "
                f"{pct(E5_TARGETS['test_accuracy'], 1)}: " + _verdict(statistics.mean(tests) >= E5_TARGETS["test_accuracy"]) + ".")
    lines = [
        summary, "", timing, "",
        _table(("seed", "best validation", "test (flip TTA)", "test without TTA", "training"), seed_rows).rstrip("\n"),
        "", accuracy, "", f"Registered: `{registered['name']}` v{registered['version']} (alias `{registered['alias']}`), the seed with "
        f"the best validation accuracy. "
        + _sources(E5_SEARCH, E5_WINNER_SEEDS,
                   "outputs/e5_search_winner/seed*/{eval,train_metrics,registered}.json"),
    ]
    return "\n".join(lines)


def _compute_budget_by_depth(search: dict) -> str:
    """Which depths the compute budget let train: the trials it timed, by blocks per stage, with the
    range of their training time per image against the hand-designed net. Depth costs differently
    per CPU, so this is where a study's space can shrink to the baseline's own depth."""
    budget = search.get("compute_budget")
    timed = [t for t in search["trials"] if t.get("relative_cost") is not None]
    if not budget or not timed:  # no baseline, or a study from before trials were timed
        return ""
    by_depth: dict[int, list[float]] = {}
    for trial in timed:
        by_depth.setdefault(trial["model_kwargs"].get("blocks_per_stage", 1), []).append(trial["relative_cost"])
    cap, noise = budget["cost_cap"], budget.get("timing_noise", 0.0)  # none: a study from before the allowance
    trained = {depth: sum(c <= cost_ceiling(cap, noise) for c in costs) for depth, costs in by_depth.items()}
    parts = [f"{depth} per stage: {trained[depth]} of {len(costs)} trained, "
             f"{min(costs):.3f}x to {max(costs):.3f}x" for depth, costs in sorted(by_depth.items())]
    pruned = len(timed) - sum(trained.values())
    allowance = f", {cost_ceiling(cap, noise):.2f}x with the timing's noise" if noise else ""
    return (f" The compute budget ({cap:g}x the hand-designed net's training time per image{allowance}) pruned {pruned} of "
            f"{len(search['trials'])} trials before they trained; the timed trials by blocks per stage, with their "
            f"time per image against that net: " + "; ".join(parts) + ".")


def _importances(search: dict) -> str:
    if "importance_evaluator" not in search:  # written before the evaluator and its direction were explicit
        return ("The importances in this file predate the fix of their direction (Optuna's default evaluator, "
                "PED-ANOVA, was given the accuracy and so explained the worst trials): not quoted; "
                "`cnnlab search-report` on the study recomputes them.")
    top = sorted(search["importances"].items(), key=lambda kv: -kv[1])[:5]
    return f"Importances ({search['importance_evaluator']}): " + ", ".join(f"{k} {v:.2f}" for k, v in top) + "."


E5_COST = "bench/search_cost.json"  # `make bench-search-cost`


def e5_cost(root: Path) -> str:
    result = _load(root, E5_COST)
    baseline = result["baseline"]["kwargs"]
    load = result["load_average_1min"]
    committed = [t for t in _load(root, result["source"])["trials"] if t["state"] == "COMPLETE"]
    # A study run again after the bench has other trials: the table must not pass for this one's.
    subject = (f"Each complete trial of `{result['source']}`" if _numbered(result["trials"]) == _numbered(committed)
               else f"These are the complete trials of an earlier study than the one `{result['source']}` now holds "
                    f"(`make bench-search-cost` times this one's), each")
    head = (f"{subject} against the entry's own net ({baseline['block_style']}, widths "
            f"{'/'.join(map(str, baseline['widths']))}), timed in turn on {_machine(result['machine'])} "
            f"({result['runtime']}; 1-minute load average {load['before']:.1f} before, {load['after']:.1f} after; "
            f"median of {result['repeats']} repeats); measured {result['measured'][:10]}. The compute budget lets a "
            f"candidate train at up to {result['cost_cap']:g}x the baseline's time per image, timed at up to "
            f"{cost_ceiling(result['cost_cap'], result['timing_noise']):.2f}x: the baseline timed against itself read "
            f"{min(result['self_costs']):.3f}x to {max(result['self_costs']):.3f}x over {len(result['self_costs'])} "
            f"timings.\n\n")
    rows = [(f"{t['number']}{' (winner)' if t['winner'] else ''}", t["block_style"], "/".join(map(str, t["widths"])),
             f"{t['parameters']:,d}", pct(t["val_accuracy"]), f"{t['relative_cost']:.2f}x",
             "yes" if t["within_budget"] else "**no**") for t in result["trials"]]
    kept = [t for t in result["trials"] if t["within_budget"]]
    winner_kept = any(t["winner"] for t in kept)
    within = (f"Under the budget, {len(kept)} of these {len(result['trials'])} trials would have trained, "
              f"{'the winner among them' if winner_kept else 'the winner not among them'}. ")
    return head + _table(("trial", "block style", "widths", "parameters", "validation (search)", "training time per image",
                          "within the compute budget"), rows) + within + _sources(E5_COST)


E5_COST_NOISE = "bench/cost_noise.json"  # `make bench-cost-noise`
TIMING_WAYS = {"every_core": "on every core (a worker before its first trial trained)",
               "one_thread": "on the worker's one thread (since)"}


def e5_cost_noise(root: Path) -> str:
    """How far the compute budget's timing strays beside a second search worker, on every core and
    on one thread."""
    result = _load(root, E5_COST_NOISE)
    load = result["load"]
    noise = pct(result["timing_noise"], 0)
    head = (f"Beside a process training as a search worker does ({load['train_seconds']:g} s of training steps, "
            f"{load['evaluate_seconds']:g} s of evaluation, a {load['pause_seconds']:g} s pause, in turn, on one thread), "
            f"on {result['machine']['cpu']} ({result['runtime']}), batches of {result['batch_size']}, "
            f"{result['repeats']} timings each way, the ways in turn; measured {result['measured'][:10]}. Each cell: the "
            f"readings' range and median, and how many lay more than the timing's noise allowed for ({noise}) "
            f"from that median.\n\n")
    candidate = result["candidate"]
    shape = candidate["kwargs"]
    # by its shape: the study in the source file may have re-run since, its trial numbers another net's
    against_baseline = (f"a net of {shape['blocks_per_stage']} blocks per stage, widths "
                        f"{'/'.join(map(str, shape['widths']))} (trial {candidate['trial']} of the study "
                        f"`{result['source']}` held then), against it")
    rows = [("the hand-designed net against itself" if name == "baseline_against_itself" else against_baseline,
             f"{result['quiet'][name]:.3f}x",
             *(f"{spread['min']:.3f}x to {spread['max']:.3f}x, median {spread['median']:.3f}x; "
               f"{spread['beyond_timing_noise']} of {len(spread['readings'])} beyond {noise}"
               for spread in (by_way[way] for way in TIMING_WAYS)))
            for name, by_way in result["nets"].items()]
    return (head + _table(("timed", "on one thread, nothing beside it", *TIMING_WAYS.values()), rows)
            + _sources(E5_COST_NOISE))


E5_RECIPES = "bench/e5_recipes.json"  # `make bench-e5-recipes`
E5_WINNERS = "bench/e5_winners.json"  # `make bench-e5-winners`
E5_BENCH_SEED = 0  # the seed bench/e5_epochs.py trains (its workload's "recipe" says so)


def _e5_bench_head(result: dict[str, Any], own: str) -> str:
    """How and where a bench/e5_epochs.py file's runs trained."""
    load = result["load_average_1min"]
    machine = {**result["machine"], "torch_threads": result["workload"]["threads_per_process"]}  # not the bench's own
    return (f"Seed {E5_BENCH_SEED} of each, {result['workload']['processes_at_once']} trained at once, on "
            f"{_machine(machine)} (1-minute load average {load['before']:.1f} before, {load['after']:.1f} after), "
            f"measured {result['measured_at'][:10]}; a choice reads the validation column, test is reported.{own}\n\n")


def _e5_bench_columns(run: dict[str, Any]) -> tuple[str, ...]:
    return (f"{run['total_parameters']:,d}", pct(run["best_val_accuracy"]), pct(run["test_accuracy"]),
            f"{run['seconds_per_epoch']:.0f} s", f"{run['projected_hours_for_3_seeds']:.2f} h")


def _e5_bench_header(result: dict[str, Any]) -> tuple[str, ...]:
    return ("parameters", "best validation", "test", f"per epoch ({result['workload']['processes_at_once']} at once)",
            "3 seeds at this speed")


def _settings(settings: list[str]) -> str:
    return " ".join(f"`{setting}`" for setting in settings)


def e5_recipes(root: Path) -> str:
    result = _load(root, E5_RECIPES)
    entry = result["entry_seeds"]
    own = ("" if entry is None else
           f" The entry's own recipe: {pct(entry['test_accuracy_mean'])} ± {100 * entry['test_accuracy_std']:.2f} "
           f"test accuracy over 3 seeds of {entry['epochs']} epochs (`{entry['source']}`).")
    rows = [(f"`{r['run']}`", _settings(r["settings"]), *_e5_bench_columns(r)) for r in result["runs"]]
    return (_e5_bench_head(result, own) + _table(("run", "settings on top of the entry", *_e5_bench_header(result)), rows)
            + _sources(E5_RECIPES))


def e5_winners(root: Path) -> str:
    """Each study's winner trained longer, beside the same seed of its retraining under the entry's
    epochs (from that study's retrained seeds)."""
    from .config import read_run_config
    from .contract import seed_run, winner_name

    result = _load(root, E5_WINNERS)
    rows, sources = [], [E5_WINNERS]
    for run in result["runs"]:
        study = _load(root, run["winner"]["search"])["study"]
        seeds_file = f"outputs/{winner_name(study)}/seeds.json"
        seed_config = f"outputs/{seed_run(winner_name(study), E5_BENCH_SEED)}/config.yaml"
        seeds = _load(root, seeds_file)
        same_seed = next((s for s in seeds["runs"] if s["seed"] == E5_BENCH_SEED), None)
        if same_seed is None:
            raise ResultsError(f"{seeds_file} has no seed {E5_BENCH_SEED} to set beside {E5_WINNERS}'s run "
                               f"{run['run']}: retrain the winner with it, or remove the e5-winners block")
        if retrained_parameters(seeds) != run["total_parameters"]:  # the study re-ran since the bench
            beside = (f"another net's ({retrained_parameters(seeds):,d} parameters): the study re-ran since; "
                      "`make bench-e5-winners` again")
        else:
            beside = (f"{pct(same_seed['best_val_accuracy'])} / {pct(same_seed['test_accuracy'])} "
                      f"({read_run_config(root / seed_config).train.epochs} epochs)")
        rows.append((f"`{run['run']}`", f"trial {run['winner']['trial']} of `{run['winner']['search']}`",
                     _settings(run["settings"]), *_e5_bench_columns(run), beside))
        sources += [run["winner"]["search"], seeds_file, seed_config]
    header = ("run", "the winner of", "settings on top of the winner", *_e5_bench_header(result),
              f"seed {E5_BENCH_SEED} of its retraining: validation / test")
    return _e5_bench_head(result, "") + _table(header, rows) + _sources(*sources)


E5_ENTRY = "e5_search"
E5_HAND_SEED_CONFIG = "outputs/e5_search/seed0/config.yaml"  # what the hand-designed seeds trained with


def e5_budget(root: Path) -> str:
    """Whether the entry's current settings fit the wall-time target, projected from the
    committed study and hand-designed seeds: seconds per trial-epoch of the search, and seconds
    per retraining epoch of the seeds trained at once (their start and test evaluation included,
    so the projection errs long). The winner trains at most ``search.cost_cap`` times the
    hand-designed net's time per image (the search's compute budget), timed within the cap plus
    the timing's noise, so its retraining is projected at that ceiling."""
    from .config import load_config, read_run_config

    config = load_config(root / "params.yaml", [f"experiment={E5_ENTRY}"])
    search, hand = _load(root, E5_SEARCH), _load(root, E5_HAND_DESIGNED)
    hand_epochs = read_run_config(root / E5_HAND_SEED_CONFIG).train.epochs
    per_trial_epoch = search["wall_seconds"] / search["epochs_spent"]
    per_retrain_epoch = hand["wall_seconds_total"] / hand_epochs
    budget, epochs, cap = config.search.epoch_budget, config.train.epochs, config.search.cost_cap
    target = E5_TARGETS["hours"] * 3600
    ceiling = cost_ceiling(cap)  # a winner may time at the cap plus the timing's noise
    searching, retraining = budget * per_trial_epoch, epochs * per_retrain_epoch * ceiling
    largest = int((target - retraining) // per_trial_epoch)
    most_epochs = int((target - searching) // (per_retrain_epoch * ceiling))  # what a protocol could retrain
    # a higher cap admits slower candidates, so the search slows with it too: scaling both errs short
    largest_cap = cap * target / (searching + retraining)
    searched = search.get("machines") or []  # none in a study from before trials recorded theirs
    caveats = []
    if not searched or not one_kind([*searched, hand["machine"]]):
        caveats.append("the search and the seeds are not known to have run on one kind of machine, so the sum "
                       "holds only as far as their speeds match")
    if hand["seed_workers"] != config.seed_workers:
        caveats.append(f"the seeds ran {hand['seed_workers']} at once, the entry now runs {config.seed_workers}")
    return (f"The entry's settings (`search.epoch_budget` {budget}, `train.epochs` {epochs}, `search.cost_cap` {cap:g}) "
            f"against {E5_TARGETS['hours']} h: the search {budget} × {per_trial_epoch:.1f} s = {searching:,.0f} s "
            f"(the committed study: {search['wall_seconds']:,.0f} s over {search['epochs_spent']} trial-epochs, on "
            f"{describe_kinds(searched)}), plus the winner's retraining {epochs} × {per_retrain_epoch:.1f} s × {ceiling:.2f} "
            f"(the cap with the timing's noise) = "
            f"{retraining:,.0f} s (the hand-designed net's {len(hand['seeds'])} seeds, {hand['seed_workers']} at once: "
            f"{hand['wall_seconds_total']:,.0f} s over {hand_epochs} epochs, on {describe_kind(hand['machine'])}), "
            f"{(searching + retraining) / 3600:.2f} h in all: "
            + ("fits" if searching + retraining <= target else "**does not fit**")
            + f". The largest epoch budget that fits beside this retraining: {largest} trial-epochs; the most "
            f"retraining epochs that fit beside this search: {most_epochs}. "
            f"The largest compute cap that fits at this epoch budget, were the search to slow in proportion "
            f"too: {largest_cap:.2f}x."
            + "".join(f" Note: {c}." for c in caveats) + "\n\n" + _sources(E5_SEARCH, E5_HAND_DESIGNED, E5_HAND_SEED_CONFIG,
                                                                    "catalogue.yaml") + "\n")


def _numbered(trials: list[dict[str, Any]]) -> dict[int, int]:
    """Trials by number, with their parameter counts: what tells one study's trials from another's."""
    return {t["number"]: t["parameters"] for t in trials}


E5_COMPARISON = "outputs/e5_search/search_comparison.json"


def format_comparison(comparison: dict[str, Any]) -> str:
    """The comparison as a Markdown table (search report, docs/RESULTS.md)."""
    def spread(mean: float, std: float) -> str:
        return f"{100 * mean:.2f} ± {100 * std:.2f}%"

    rows = ["| arm | trial-epochs | trials | winner's parameters | retrained validation | retrained test "
            "| vs hand-designed | search + retraining | retrained on |", "|---|---|---|---|---|---|---|---|---|"]
    for arm in comparison["arms"]:
        r = arm["retrained"]
        searched = "epochs_spent" in arm  # the hand-designed arm ran no search
        gain = comparison["gain_over_hand_designed_pp"].get(arm["arm"])
        hours = comparison["search_plus_retrain_hours"].get(arm["arm"])
        rows.append(" | ".join([
            f"| {arm['arm']}", str(arm["epochs_spent"]) if searched else "-", str(arm["trials"]) if searched else "-",
            f"{r['total_parameters']:,d}", spread(r["val_accuracy_mean"], r["val_accuracy_std"]),
            spread(r["test_accuracy_mean"], r["test_accuracy_std"]),
            f"{gain:+.2f} pp" if gain is not None else "-",
            _arm_hours(arm, hours), describe_kind(r["machine"])]) + " |")
    return "\n".join(rows) + "\n"


def _arm_hours(arm: dict[str, Any], hours: float | None) -> str:
    if "epochs_spent" not in arm:  # the hand-designed arm ran no search
        return f"{arm['retrained']['wall_seconds'] / 3600:.2f} h (retraining)"
    if hours is None:
        return "not one machine"
    if "search_machines" not in arm:  # a comparison from before studies recorded their machines
        return f"{hours:.2f} h (search's machine not recorded)"
    return f"{hours:.2f} h"


E5_HAND_DESIGNED = "outputs/e5_search/seeds.json"  # `cnnlab seeds` on the entry's own model and recipe
E5_CONTROL_SEEDS = "outputs/e5_search_random_winner/seeds.json"  # `cnnlab retrain-control`


def e5_comparison(root: Path) -> str:
    if not (root / E5_COMPARISON).exists():
        return (f"Not run yet with this protocol: `dvc repro experiments/dvc.yaml:search_compare-e5_search` "
                f"writes `{E5_COMPARISON}` and `outputs/e5_search/search_comparison.png`. " + e5_arms_so_far(root))
    comparison = _load(root, E5_COMPARISON)
    (own,) = [arm for arm in comparison["arms"] if arm.get("study") == comparison["study"]]  # not the control
    earlier = _earlier_study_note(root, own)
    test = own["retrained"]["test_accuracy_mean"]
    hours = comparison["search_plus_retrain_hours"][own["arm"]]
    gain = comparison["gain_over_hand_designed_pp"][own["arm"]]
    verdicts = [
        f"test accuracy {pct(test)} against >= {pct(E5_TARGETS['test_accuracy'], 1)}: "
        + _verdict(test >= E5_TARGETS["test_accuracy"]),
        _hours_verdict(own, hours),
        f"{gain:+.2f} pp over the hand-designed candidate against >= +{E5_TARGETS['gain_pp']} pp: "
        + _verdict(gain >= E5_TARGETS["gain_pp"]),
    ]
    return (earlier + f"{comparison['epoch_budget']} trial-epochs per sampler, winners retrained "
            f"{comparison['retrain_epochs']} epochs over seeds {comparison['seeds']}. {_searched_on(comparison)}\n\n"
            + format_comparison(comparison) + "\n"
            + f"Targets for `{own['arm']}`{' in that study' if earlier else ''}: " + "; ".join(verdicts) + ". "
            + "![search comparison](../outputs/e5_search/search_comparison.png)\n\n"
            + _sources(E5_COMPARISON) + "\n")


def _earlier_study_note(root: Path, own: dict[str, Any]) -> str:
    """search-compare copies the study's retrained winner into its own arm; once retrain-best has
    run again, the comparison is an earlier study's and must not pass for the current one's."""
    winner = _load(root, E5_WINNER_SEEDS) if (root / E5_WINNER_SEEDS).exists() else None
    retrained = own["retrained"]
    if winner is None or (retrained_parameters(winner), winner["test_accuracy_mean"]) == (
            retrained["total_parameters"], retrained["test_accuracy_mean"]):
        return ""
    return (f"**An earlier study's comparison**: its `{own['arm']}` winner ({retrained['total_parameters']:,d} "
            f"parameters, {pct(retrained['test_accuracy_mean'])} test) is not the one `{E5_WINNER_SEEDS}` holds now "
            f"({retrained_parameters(winner):,d} parameters, {pct(winner['test_accuracy_mean'])} test); "
            "`dvc repro experiments/dvc.yaml:search_compare-e5_search` re-runs the control arm and the "
            "hand-designed net's seeds where their settings changed, then the comparison. It read:\n\n")


def _hours_verdict(arm: dict[str, Any], hours: float | None) -> str:
    """Met or not only for a wall time measured on one kind of machine; otherwise, how to measure it."""
    target = f"<= {E5_TARGETS['hours']} h"
    if hours is not None and "search_machines" in arm:
        return f"search + retraining {hours:.2f} h against {target}: " + _verdict(hours <= E5_TARGETS["hours"])
    why = ("its search's machine was not recorded" if "search_machines" not in arm
           else "its search and its retraining ran on different machines")
    return (f"search + retraining against {target}: **not measured**, {why} (`dvc repro "
            f"experiments/dvc.yaml:retrain_best-{arm['study']}` runs both, one after the other, on one machine)")


def _searched_on(comparison: dict[str, Any]) -> str:
    """Where each search ran (its trials' machines), beside the retraining machines of the table:
    a search plus retraining is a wall time only on one kind of machine."""
    searched = [f"{arm['arm']} on {describe_kinds(arm.get('search_machines', []))}"
                for arm in comparison["arms"] if "epochs_spent" in arm]
    return (f"The searches ran {', '.join(searched)}; each arm's retraining ran on the machine of the last column. "
            f"Search plus retraining is a wall time only where both ran on one kind of machine.")


def e5_arms_so_far(root: Path) -> str:
    """Until every arm has run: the study's retrained winner against the hand-designed net, when
    both were retrained over the same seeds, so a finished arm is quoted before the control is."""
    if not (root / E5_SEARCH).exists():
        return "\n"
    search, winner = e5_files(root)
    hand = _load(root, E5_HAND_DESIGNED) if (root / E5_HAND_DESIGNED).exists() else None
    if winner is None or hand is None:
        missing = [stage for stage, seeds in (("retrain_best", winner), ("seeds", hand)) if seeds is None]
        return "Not retrained yet: " + ", ".join(f"`{stage}-e5_search`" for stage in missing) + ".\n"

    def accuracy(seeds: dict[str, Any]) -> str:
        return mean_std([r["test_accuracy"] for r in seeds["runs"]])

    seed_lists = [[r["seed"] for r in seeds["runs"]] for seeds in (winner, hand)]
    if seed_lists[0] != seed_lists[1]:
        return (f"The {search['sampler']} winner and the hand-designed net were retrained over other seeds "
                f"({seed_lists[0]} and {seed_lists[1]}): not compared.\n")
    gain = 100 * (winner["test_accuracy_mean"] - hand["test_accuracy_mean"])
    return (f"So far, over seeds {seed_lists[0]}: the {search['sampler']} study's winner "
            f"({retrained_parameters(winner):,d} parameters, its searched recipe) {accuracy(winner)} test, the "
            f"hand-designed net ({retrained_parameters(hand):,d} parameters, its own recipe) {accuracy(hand)}: "
            f"{gain:+.2f} pp against >= +{E5_TARGETS['gain_pp']} pp, "
            + _verdict(gain >= E5_TARGETS["gain_pp"])
            + (". " if (root / E5_CONTROL_SEEDS).exists() else ". The control study's arm has not run yet. ")
            + _sources(E5_WINNER_SEEDS, E5_HAND_DESIGNED) + "\n")


def e8(root: Path) -> str:
    separability = {r["experiment"]: r for r in _load(root, "outputs/e8/separability.json")}
    rows = []
    for name in ("e8_scratch", "e8_svm", "e8_last_layer", "e8_finetune_aug"):
        evaluation, train = _load(root, f"outputs/{name}/eval.json"), _load(root, f"outputs/{name}/train_metrics.json")
        linear = separability.get(name, {}).get("tsne_linear_accuracy")
        rows.append((name, pct(evaluation["test_accuracy"], 1), f"{evaluation['trainable_parameters']:,d}",
                     f"{train['wall_seconds']:.0f} s", "—" if linear is None else pct(linear, 0)))
    return _table(("run", "test", "trainable params", "training", "t-SNE linear separability"), rows) + _sources(
        "outputs/e8_*/eval.json", "outputs/e8_*/train_metrics.json", "outputs/e8/separability.json")


def faults(root: Path) -> str:
    result = _load(root, "bench/faults.json")
    s, machine = result["summary"], result["machine"]
    return (f"The committed `bench/faults.json` ({_machine(machine)}, torch {machine['torch']}; "
            f"`{result['command']}`): {s['faults_injected']} faults injected, {s['survived']} survived, "
            f"{s['bad_inputs_tried']} bad inputs tried ({s['bad_inputs_rejected']} rejected naming the key), data "
            f"lost {s['data_lost']}, undetected {len(s['undetected'])}.\n")


def catalogue(root: Path) -> str:
    path = root / "outputs/comparison.md"
    if not path.exists():
        raise ResultsError("outputs/comparison.md is missing; run `cnnlab compare`")
    return path.read_text() + "\n" + _sources("outputs/comparison.json") + "\n"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n"


RENDERERS: dict[str, Callable[[Path], str]] = {
    "e1": e1, "e1-headline": e1_headline, "e1-fast": e1_fast, "e1-fast-headline": e1_fast_headline, "bench": bench, "bench-headline": bench_headline,
    "ddp": ddp, "dvc-parser": dvc_parser, "e5": e5, "e5-headline": e5_headline, "e5-comparison": e5_comparison, "e5-cost": e5_cost, "e5-cost-noise": e5_cost_noise, "e5-budget": e5_budget, "e5-recipes": e5_recipes, "e5-winners": e5_winners, "e8": e8, "faults": faults, "catalogue": catalogue,
}


def regenerate(text: str, root: Path) -> str:
    """``text`` with every block's body rendered afresh from the files under ``root``."""
    def render(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise ResultsError(f"unknown results block {name!r}; known: {', '.join(sorted(RENDERERS))}")
        body = RENDERERS[name](root).rstrip("\n") + "\n"
        return f"{match.group(1)}{body}{match.group(4)}"

    return BLOCK.sub(render, text)


def measured_figures_outside_blocks(text: str) -> list[str]:
    """Lines of prose (outside generated blocks and code fences) that hold a measured-looking figure."""
    prose = FENCE.sub("", BLOCK.sub("", text))
    return [line.strip() for line in prose.splitlines() if MEASURED.search(line)]
