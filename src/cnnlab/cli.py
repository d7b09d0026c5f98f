"""cnnlab's one entry point; ``dvc.yaml``, ``MLproject`` and the README all call it.

    cnnlab datasets                 # summary table of every dataset it can find
    cnnlab models                   # every registered model with its parameter count
    cnnlab prepare|train|evaluate|report|export|register [-S section.key=value ...]
    cnnlab pipeline                 # all stages in order, without DVC (MLproject's main)

Every command reads ``params.yaml`` (``--params`` for another file) and accepts the same
``-S key=value`` overrides as ``dvc exp run -S``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .config import Config, ConfigError, load_config, save_config


def write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def read_json(path: Path, produced_by: str) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `cnnlab {produced_by}` (or `dvc repro {produced_by}`) first")
    return json.loads(path.read_text())


class Paths:
    """Every file a stage of one experiment reads or writes (dvc.yaml declares the same)."""

    def __init__(self, config: Config):
        from .data import prepared_path

        out, models = config.output_dir, config.model_dir
        self.prepared = prepared_path(config.data.prepared_dir, config.data.name, config.data.image_size)
        self.data_summary = self.prepared.with_suffix(".json")
        self.config = out / "config.yaml"
        self.run_info = out / "run.json"
        self.history = out / "history.json"
        self.batch_losses = out / "batch_losses.json"
        self.train_metrics = out / "train_metrics.json"
        self.eval = out / "eval.json"
        self.predictions = out / "predictions.json"
        self.figures = out / "figures"
        self.parity = out / "onnx_parity.json"
        self.layers = out / "layers.json"
        self.analysis = out / "analysis.npz"  # t-SNE points, feature maps, example images
        self.analysis_json = out / "analysis.json"  # weight histograms, example picks
        self.report = out / "report.md"
        self.registered = out / "registered.json"
        self.best = models / "best.pt"
        self.last = models / "last.pt"
        self.onnx = models / "model.onnx"


# --- commands ------------------------------------------------------------------------------

def cmd_datasets(config: Config, args) -> None:
    from .data import DatasetError, SourceContext, list_datasets, load_raw, prepare, summarize

    names = args.names or list_datasets()
    rows = []
    for name in names:
        ctx = SourceContext.from_config(config.data)
        ctx.download = False  # a summary must not start multi-GB downloads
        try:
            raw = load_raw(name, ctx)
            summary = summarize(prepare(raw, config.data.val_fraction, config.data.split_seed))
            rows.append(summary)
            print(f"{name:20s} {summary['height']:>4d} {summary['width']:>4d} {summary['channels']:>3d} "
                  f"{summary['classes']:>4d} {summary['train']:>7d} {summary['val']:>6d} {summary['test']:>6d}  "
                  f"{summary['provenance'].get('source', '')}", flush=True)
            if args.per_class:
                for split, counts in summary["per_class"].items():
                    print(f"    {split:5s} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        except DatasetError as err:
            print(f"{name:20s} not available: {str(err).splitlines()[0]}", flush=True)
    if args.json:
        write_json(Path(args.json), rows)


def cmd_models(config: Config, args) -> None:
    from .models import count_parameters, create_model, list_models, model_entry

    print(f"{'model':20s} {'parameters':>12s}  {'input':12s} description")
    for name in list_models():
        entry = model_entry(name)
        count = count_parameters(create_model(name))
        shape = "x".join(map(str, entry.input_shape))
        print(f"{name:20s} {count:>12,d}  {shape:12s} {entry.description}")


def cmd_prepare(config: Config, args) -> None:
    from .data import SourceContext, load_raw, prepare, summarize
    from .data.prepare import save_prepared

    paths = Paths(config)
    raw = load_raw(config.data.name, SourceContext.from_config(config.data))
    # data.classes and data.train_subset are applied when stages load it (data.load_view).
    data = prepare(raw, config.data.val_fraction, config.data.split_seed)
    save_prepared(data, paths.prepared)
    summary = summarize(data)
    write_json(paths.data_summary, summary)
    print(f"prepared {data.name}: train {summary['train']}, val {summary['val']}, test {summary['test']}, "
          f"{summary['channels']}x{summary['height']}x{summary['width']} -> {paths.prepared}")


def cmd_train(config: Config, args) -> None:
    from .data import load_view
    from .models import count_parameters, create_model
    from .tracking import RunTracker, provenance_tags
    from .train import TrainingDiverged, fit, resolve_model_kwargs
    from .transfer import checkpoint_arguments

    paths = Paths(config)
    data = load_view(paths.prepared, config.data)
    save_config(config, paths.config)
    kwargs = checkpoint_arguments(resolve_model_kwargs(config.model.name, config.model.kwargs, data))
    parameters = count_parameters(create_model(config.model.name, **kwargs))  # all of them, before any freezing
    tags = provenance_tags(config, data.provenance)
    if config.train.resume_from:
        tags["cnnlab.resumed_from"] = config.train.resume_from
    # Under `mlflow run`, MLflow has already created the run: log into it instead of a second one.
    tracker = RunTracker(config, run_id=os.environ.get("MLFLOW_RUN_ID"), run_name=config.experiment, tags=tags)
    tracker.write_run_info(paths.run_info)
    tracker.log_config(config, parameters)
    tracker.log_artifacts([paths.config, paths.data_summary])
    print(f"training {config.model.name} ({parameters:,d} parameters) on {data.name}; "
          f"MLflow run {tracker.run_id} in {tracker.uri}", flush=True)
    try:
        result = fit(config, data, tracker)
    except (TrainingDiverged, KeyboardInterrupt) as err:
        tracker.set_tags({"cnnlab.failure": str(err) or type(err).__name__})
        tracker.set_terminated("FAILED" if isinstance(err, TrainingDiverged) else "KILLED")
        raise
    metrics = {
        "best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
        "final_val_accuracy": result.history[-1]["val_accuracy"], "epochs": len(result.history),
        "parameters": result.parameters, "wall_seconds": result.wall_seconds,
        "train_images_per_second": sorted(h["train_images_per_second"] for h in result.history)[
            len(result.history) // 2],
        "runtime": result.runtime, "data_embedded": bool(data.provenance.get("embedded", False)),
        "data_sha256": data.provenance.get("content_sha256", ""), "data_source": data.provenance.get("source", ""),
        **generalisation_gaps(result.history, result.best_epoch),
        "transfer_policy": config.transfer.policy, "transfer_plan": result.transfer.get("plan", ""),
        "frozen_parameters": result.transfer.get("frozen_parameters", 0),
    }
    write_json(paths.history, result.history)
    write_json(paths.batch_losses, result.batch_losses)
    write_json(paths.train_metrics, metrics)
    tracker.log_metrics({k: v for k, v in metrics.items() if k != "epochs"})
    tracker.set_tags({"cnnlab.transfer": metrics["transfer_plan"]})
    tracker.log_series("train_batch_loss", result.batch_losses)
    tracker.log_artifacts([paths.history, paths.train_metrics])
    if config.tracking.log_model:
        log_model(tracker, paths.best, data)
    tracker.set_terminated("FINISHED")
    print(f"best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}; "
          f"{result.wall_seconds:.0f}s on {result.runtime}")


def generalisation_gaps(history: list[dict[str, float]], epoch: int) -> dict[str, float]:
    """Train minus val accuracy and val minus train loss at ``epoch``: how much augmentation and
    freezing close the gap (E7). Train figures are the running means under augmentation/dropout."""
    record = next(h for h in history if h["epoch"] == epoch)
    return {"train_val_accuracy_gap": record["train_accuracy"] - record["val_accuracy"],
            "train_val_loss_gap": record["val_loss"] - record["train_loss"]}


def log_model(tracker, best_path: Path, data) -> str:
    import torch

    from .checkpoint import inference_model, load_checkpoint

    module = inference_model(load_checkpoint(best_path))
    example = data.x_val[:4].float() / 255.0
    with torch.no_grad():
        output = module(example).numpy()
    return tracker.log_pytorch_model(module, example.numpy(), output)


def cmd_evaluate(config: Config, args) -> None:
    from .checkpoint import load_checkpoint, model_from_checkpoint, checkpoint_tta
    from .data import load_view
    from .metrics import classification_summary
    from .runtime import resolve_runtime, set_threads
    from .tracking import reopen_run
    from .train import BatchTransform, predict

    paths = Paths(config)
    set_threads(config.train.threads)
    payload = load_checkpoint(paths.best)
    data = load_view(paths.prepared, config.data)
    runtime = resolve_runtime(config.train.device, "fp32")  # reported numbers are fp32
    model = model_from_checkpoint(payload).to(runtime.device)
    norm = payload["normalization"]
    transform = BatchTransform(norm["mean"], norm["std"], runtime)
    tta = checkpoint_tta(payload)
    logits, _ = predict(model, data.x_test, transform, config.train.eval_batch_size, tta)
    summary = classification_summary(logits, data.y_test, payload["classes"])
    report = {"test_accuracy": summary["accuracy"], "test_loss": summary["loss"],
              "test_errors": summary["errors"], "test_samples": summary["samples"], "test_time_augmentation": tta,
              "best_epoch": payload["epoch"], "parameters": payload.get("total_parameters", payload["parameters"]),
              "trainable_parameters": payload["parameters"],
              "most_confused": summary["most_confused"], "per_class_accuracy": summary["per_class_accuracy"],
              "confusion_matrix": summary["confusion_matrix"], "classes": payload["classes"]}
    if tta != "none":  # what TTA adds, measured on the same checkpoint
        plain, _ = predict(model, data.x_test, transform, config.train.eval_batch_size)
        report["test_accuracy_without_tta"] = (plain.argmax(1) == data.y_test).float().mean().item()
    write_json(paths.eval, report)
    predicted = logits.argmax(1).tolist()
    write_json(paths.predictions, [{"actual": payload["classes"][t], "predicted": payload["classes"][p]}
                                   for t, p in zip(data.y_test.tolist(), predicted)])
    tracker = reopen_run(config, paths.run_info)
    tracker.log_metrics({k: report[k] for k in ("test_accuracy", "test_loss", "test_errors",
                                                 "test_accuracy_without_tta") if k in report})
    tracker.log_artifact(paths.eval)
    print(f"test accuracy {report['test_accuracy']:.4f} ({report['test_errors']} errors of "
          f"{report['test_samples']}); most confused: "
          + ", ".join(f"{p['true']}->{p['predicted']} ({p['count']})" for p in report["most_confused"][:3]))


def cmd_analyze(config: Config, args) -> None:
    """Compute, from the best checkpoint, everything the report draws (no plotting here)."""
    import numpy as np

    from . import analysis
    from .checkpoint import load_checkpoint, model_from_checkpoint, checkpoint_tta
    from .data import load_view
    from .runtime import resolve_runtime, set_threads
    from .train import BatchTransform, predict

    paths = Paths(config)
    settings = config.analysis
    set_threads(config.train.threads)
    payload = load_checkpoint(paths.best)
    data = load_view(paths.prepared, config.data)
    model = model_from_checkpoint(payload)
    norm = payload["normalization"]
    transform = BatchTransform(norm["mean"], norm["std"], resolve_runtime("cpu", "fp32"))

    rows = analysis.layer_summary(model, tuple(payload["input_shape"]))
    write_json(paths.layers, rows)
    logits, features = predict(model, data.x_test, transform, config.train.eval_batch_size,
                               checkpoint_tta(payload))
    predicted = logits.argmax(1)
    sample = analysis.stratified_sample(data.y_test, min(settings.tsne_points, len(data.y_test)), settings.tsne_seed)
    started = time.perf_counter()
    tsne_intermediate = analysis.tsne_embedding(features[sample], seed=settings.tsne_seed)
    tsne_final = analysis.tsne_embedding(logits[sample], seed=settings.tsne_seed)
    tsne_seconds = time.perf_counter() - started
    examples = analysis.pick_examples(predicted, data.y_test, settings.examples, settings.tsne_seed)
    chosen = data.x_test[settings.feature_map_image : settings.feature_map_image + 1]
    maps = analysis.feature_maps(model, transform(chosen, train=False)[0])
    maps = {name: maps[name] for name in analysis.evenly_spaced(list(maps), settings.max_layers)}
    shown = examples["correct"] + examples["wrong"]
    np.savez_compressed(
        paths.analysis, tsne_intermediate=tsne_intermediate, tsne_final=tsne_final,
        tsne_labels=data.y_test[sample].numpy(), example_images=data.x_test[shown].numpy(),
        example_true=data.y_test[shown].numpy(), example_predicted=predicted[shown].numpy(),
        feature_map_image=chosen[0].numpy(), **{f"feature_map/{name}": m.numpy() for name, m in maps.items()})
    histograms = analysis.weight_histograms(model, settings.histogram_bins)
    histograms = {name: histograms[name] for name in analysis.evenly_spaced(list(histograms), settings.max_layers)}
    write_json(paths.analysis_json, {
        "classes": payload["classes"], "tsne_points": len(sample), "tsne_seconds": tsne_seconds,
        "examples": {k: len(v) for k, v in examples.items()}, "weight_histograms": histograms,
        "feature_map_layers": list(maps), "feature_map_image": settings.feature_map_image,
    })
    print(f"analysis: {len(rows)} layers, t-SNE of {len(sample)} points x2 in {tsne_seconds:.0f}s, "
          f"{len(maps)} conv feature maps, {len(examples['correct'])}+{len(examples['wrong'])} examples")


def cmd_report(config: Config, args) -> None:
    """Every figure from saved results, a Markdown report gathering them, all logged to MLflow."""
    import numpy as np

    from . import report
    from .analysis import format_layer_table
    from .tracking import reopen_run

    paths = Paths(config)
    history = read_json(paths.history, "train")
    batch_losses = read_json(paths.batch_losses, "train")
    evaluation = read_json(paths.eval, "evaluate")
    details = read_json(paths.analysis_json, "analyze")
    layers = read_json(paths.layers, "analyze")
    arrays = np.load(paths.analysis)
    classes, title, fig = evaluation["classes"], config.experiment, paths.figures
    figures = [
        report.plot_learning_curves(history, fig / "learning_curves.png", batch_losses, title),
        report.plot_confusion_matrix(evaluation["confusion_matrix"], classes, fig / "confusion_matrix.png", title),
        report.plot_tsne(arrays["tsne_intermediate"], arrays["tsne_labels"], classes, fig / "tsne_intermediate.png",
                         f"{title}: t-SNE of the intermediate representation"),
        report.plot_tsne(arrays["tsne_final"], arrays["tsne_labels"], classes, fig / "tsne_final.png",
                         f"{title}: t-SNE of the final representation (logits)"),
        report.plot_weight_histograms(details["weight_histograms"], fig / "weight_histograms.png"),
        report.plot_feature_maps({k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("feature_map/")},
                                 fig / "feature_maps.png"),
    ]
    n_correct = details["examples"]["correct"]
    for kind, part in (("correct", slice(0, n_correct)), ("wrong", slice(n_correct, None))):
        if len(arrays["example_true"][part]):
            figures.append(report.plot_example_grid(
                arrays["example_images"][part], arrays["example_true"][part], arrays["example_predicted"][part],
                classes, fig / f"examples_{kind}.png", f"{title}: {kind}ly classified test images"))
    paths.report.write_text(render_report(config, paths, history, evaluation, layers, figures,
                                          format_layer_table(layers)))
    tracker = reopen_run(config, paths.run_info)
    tracker.log_artifacts(figures, "figures")
    tracker.log_artifacts([paths.report, paths.layers])
    print(f"report: {paths.report} with {len(figures)} figures")


def render_report(config: Config, paths: Paths, history, evaluation, layers, figures, layer_table: str) -> str:
    train = read_json(paths.train_metrics, "train")
    best = max(history, key=lambda h: h["val_accuracy"])
    reference = config.reference.get("test_accuracy")
    lines = [
        f"# {config.experiment}", "",
        f"- model: `{config.model.name}` {config.model.kwargs or ''}, **{train['parameters']:,d}** trainable parameters",
        f"- data: `{config.data.name}` from {train['data_source']} (sha256 {train['data_sha256'][:12]}…)"
        + (" — **embedded 5,000-digit subset**" if train["data_embedded"] else ""),
        f"- training: {len(history)} epochs, {config.train.optimizer} lr {config.train.lr}, batch "
        f"{config.train.batch_size}, {train['runtime']}, {train['wall_seconds']:.0f} s",
        f"- best validation accuracy **{best['val_accuracy']:.4f}** at epoch {best['epoch']}",
        f"- test accuracy **{evaluation['test_accuracy']:.4f}** ({evaluation['test_errors']} errors of "
        f"{evaluation['test_samples']}) from the best-validation checkpoint",
    ]
    if train.get("transfer_plan"):
        lines.append(f"- transfer: {train['transfer_plan']} ({train.get('frozen_parameters', 0):,d} parameters frozen)")
    if "train_val_accuracy_gap" in train:
        lines.append(f"- train − val at the best epoch: accuracy {train['train_val_accuracy_gap']:+.4f}, "
                     f"loss (val − train) {train['train_val_loss_gap']:+.4f}")
    if reference is not None:
        lines.append(f"- catalogue reference: {reference:.4f} ({config.reference.get('source', '')})")
    lines += ["", "## Most confused pairs", "", "| true | predicted | count |", "| --- | --- | ---: |"]
    lines += [f"| {p['true']} | {p['predicted']} | {p['count']} |" for p in evaluation["most_confused"]]
    lines += ["", "## Layers", "", layer_table, "", "## Figures", ""]
    lines += [f"![{f.stem}](figures/{f.name})" for f in figures]
    return "\n".join(lines) + "\n"


def cmd_export(config: Config, args) -> None:
    from .checkpoint import inference_model, load_checkpoint
    from .data import load_view
    from .export import ParityError, export_onnx, onnx_parity
    from .tracking import reopen_run

    paths = Paths(config)
    payload = load_checkpoint(paths.best)
    module = inference_model(payload)
    export_onnx(module, tuple(payload["input_shape"]), paths.onnx, config.export.opset)
    data = load_view(paths.prepared, config.data)
    parity = onnx_parity(module, paths.onnx, data.x_test, config.export.max_abs_diff,
                         config.export.min_argmax_agreement)
    write_json(paths.parity, parity.to_dict())
    tracker = reopen_run(config, paths.run_info)
    tracker.log_metrics({"onnx_max_abs_diff": parity.max_abs_diff, "onnx_argmax_agreement": parity.argmax_agreement})
    tracker.set_tags({"onnx.parity": "passed" if parity.passed else "failed"})
    tracker.log_artifacts([paths.onnx, paths.parity], "onnx")
    print(f"ONNX parity on {parity.samples} test images: max |diff| {parity.max_abs_diff:.2e} "
          f"(limit {parity.max_abs_diff_limit:.0e}), argmax agreement {parity.argmax_agreement:.4%}")
    if not parity.passed:
        raise ParityError(f"ONNX parity failed (see {paths.parity}); the model is not registered. "
                          "Check for ops that differ between PyTorch and onnxruntime, or relax export.* limits.")


def cmd_register(config: Config, args) -> None:
    from .checkpoint import load_checkpoint
    from .models.efficientnet import file_sha256
    from .tracking import register_model, reopen_run

    paths = Paths(config)
    parity = read_json(paths.parity, "export")
    if not parity.get("passed"):
        raise RuntimeError(f"{paths.parity} records a failed ONNX parity check; refusing to register")
    evaluation = read_json(paths.eval, "evaluate")
    tracker = reopen_run(config, paths.run_info)
    model_uri = tracker.client.get_run(tracker.run_id).data.tags.get("model.uri")
    if not model_uri:
        raise RuntimeError("the run has no logged model; set tracking.log_model=true and retrain")
    name = config.tracking.registered_model or config.experiment.replace("_", "-")
    record = register_model(tracker, model_uri, name, config.tracking.alias, "test_accuracy",
                            evaluation["test_accuracy"], {"onnx_parity": "passed", "run_id": tracker.run_id,
                                                          "onnx_sha256": file_sha256(paths.onnx)},
                            load_checkpoint(paths.best)["weights_sha256"])
    write_json(paths.registered, record)
    moved = f"alias '{record['alias']}' -> v{record['version']}" if record["alias_moved"] else \
        f"alias '{record['alias']}' stays on v{record['previous_alias_version']} (scores higher)"
    print(f"{'registered' if record['created'] else 'already registered:'} {name} v{record['version']} "
          f"(test accuracy {evaluation['test_accuracy']:.4f}); {moved}")


def train_and_evaluate_seed(config: Config, args) -> dict[str, Any]:
    """One seed of `cnnlab seeds` (module level: worker processes import it)."""
    print(f"== seed {config.train.seed}", flush=True)
    cmd_train(config, args)
    cmd_evaluate(config, args)
    paths = Paths(config)
    evaluation, train = read_json(paths.eval, "evaluate"), read_json(paths.train_metrics, "train")
    return {"seed": config.train.seed, "test_accuracy": evaluation["test_accuracy"],
            "best_val_accuracy": train["best_val_accuracy"], "wall_seconds": train["wall_seconds"],
            "parameters": train["parameters"], "run_id": read_json(paths.run_info, "train")["run_id"]}


def cmd_seeds(config: Config, args) -> None:
    """Train and evaluate the experiment once per seed, ``seed_workers`` seeds at a time;
    mean ± std is the headline figure."""
    import dataclasses

    from .metrics import mean_std
    from .parallel import run_jobs, threads_per_worker

    workers = min(config.seed_workers, len(config.seeds))
    train = config.train
    if workers > 1:  # interleaved progress bars from several processes would be noise
        train = dataclasses.replace(train, threads=threads_per_worker(workers, train.threads), progress=False)
        print(f"seeds {config.seeds}: {workers} processes of {train.threads} thread(s)", flush=True)
    jobs = [(dataclasses.replace(config, experiment=f"{config.experiment}/seed{seed}",
                                 train=dataclasses.replace(train, seed=seed)), args) for seed in config.seeds]
    started = time.perf_counter()
    runs = run_jobs(train_and_evaluate_seed, jobs, workers, describe=lambda job: f"seed {job[0].train.seed}")
    mean, std = mean_std([r["test_accuracy"] for r in runs])
    summary = {"experiment": config.experiment, "seeds": config.seeds, "test_accuracy_mean": mean,
               "test_accuracy_std": std, "wall_seconds_mean": mean_std([r["wall_seconds"] for r in runs])[0],
               "seed_workers": workers, "wall_seconds_total": time.perf_counter() - started,
               "parameters": runs[0]["parameters"], "runs": runs}
    write_json(config.output_dir / "seeds.json", summary)
    print(f"{config.experiment}: test accuracy {100 * mean:.2f} ± {100 * std:.2f} % over seeds {config.seeds}")


def cmd_compare(config: Config, args) -> None:
    from .compare import experiment_row, format_markdown
    from .data import DatasetError, SourceContext, load_raw

    availability: dict[str, str] = {}

    def why_missing(dataset: str) -> str:
        if dataset not in availability:
            ctx = SourceContext.from_config(config.data)
            ctx.download = False
            try:
                load_raw(dataset, ctx)
                availability[dataset] = ""
            except DatasetError as err:
                availability[dataset] = f"{dataset} is not available here ({str(err).splitlines()[0]})"
        return availability[dataset]

    rows = [experiment_row(load_config(args.params, [*args.overrides, f"experiment={name}"]), args.tolerance,
                           why_missing) for name in experiment_names(args.params)]
    out = Path(config.outputs_dir)
    write_json(out / "comparison.json", [row.__dict__ for row in rows])
    table = format_markdown(rows, args.tolerance)
    (out / "comparison.md").write_text(table)
    print(table)


def cmd_search(config: Config, args) -> None:
    from .search import search_with_workers, write_summary

    study = search_with_workers(config, Paths(config).prepared)
    summary = write_summary(study, Path(config.outputs_dir) / config.search.study / "search.json",
                            config.search.param_budget)
    states = ", ".join(f"{k.lower()} {v}" for k, v in summary["states"].items() if v)
    print(f"study {study.study_name}: {states}")
    for best in summary["best"]:
        print(f"best trial {best['number']}: val accuracy {best['val_accuracy']:.4f}, "
              f"{best['parameters']:,d} parameters, {best['model_kwargs']}")


def cmd_search_report(config: Config, args) -> None:
    """The study's figures from search.json, logged to the study's MLflow parent run."""
    from . import report
    from .tracking import RunTracker

    folder = Path(config.outputs_dir) / config.search.study
    summary = read_json(folder / "search.json", "search")
    figures = [
        report.plot_search_history(summary, folder / "search_figures" / "history.png"),
        report.plot_accuracy_vs_parameters(summary, folder / "search_figures" / "accuracy_vs_parameters.png"),
        report.plot_param_importances(summary, folder / "search_figures" / "param_importances.png"),
        report.plot_parallel_coordinates(summary, folder / "search_figures" / "parallel_coordinates.png"),
    ]
    if summary.get("mlflow_parent_run_id"):
        parent = RunTracker(config, run_id=summary["mlflow_parent_run_id"])
        parent.log_artifacts(figures, "search_figures")
        parent.log_artifact(folder / "search.json")
    print("search figures: " + ", ".join(str(f) for f in figures))


def winner_config(config: Config, best: dict[str, Any]) -> Config:
    """The experiment's full training recipe with the search winner's architecture and optimizer."""
    import dataclasses

    from .config import ModelConfig

    train = dataclasses.replace(config.train, optimizer=best["params"]["optimizer"], lr=best["params"]["lr"],
                                batch_size=best["params"]["batch_size"])
    return dataclasses.replace(config, experiment=f"{config.search.study}_winner", train=train,
                               model=ModelConfig("search_cnn", best["model_kwargs"]))


def cmd_retrain_best(config: Config, args) -> None:
    """Retrain the best trial in full with every seed, then export and register the best seed."""
    import dataclasses

    from .models.searchable import count_for

    summary = read_json(Path(config.outputs_dir) / config.search.study / "search.json", "search")
    if not summary["best"]:
        raise RuntimeError(f"study {config.search.study} has no complete trial yet; run `cnnlab search` longer")
    best = max(summary["best"], key=lambda b: b["val_accuracy"])  # Pareto front: its most accurate member
    parameters = count_for(best["model_kwargs"])
    if parameters > config.search.param_budget:
        raise RuntimeError(f"trial {best['number']} has {parameters:,d} parameters, over the budget "
                           f"{config.search.param_budget:,d}; refusing to train it")
    winner = winner_config(config, best)
    print(f"retraining trial {best['number']} ({parameters:,d} parameters) as {winner.experiment} "
          f"with seeds {winner.seeds}", flush=True)
    cmd_seeds(winner, args)
    seeds = read_json(winner.output_dir / "seeds.json", "seeds")
    top = max(seeds["runs"], key=lambda r: r["test_accuracy"])
    tracking = dataclasses.replace(winner.tracking, registered_model=winner.experiment.replace("_", "-"))
    chosen = dataclasses.replace(winner, experiment=f"{winner.experiment}/seed{top['seed']}", tracking=tracking)
    cmd_export(chosen, args)
    cmd_register(chosen, args)


def cmd_freeze_sweep(config: Config, args) -> None:
    """E6: fine-tune once per k with the first k layers frozen, plus once from scratch; accuracy
    and training time against k in ``freeze_sweep.json`` and a figure."""
    import dataclasses

    from . import report
    from .data import load_view
    from .models import create_model
    from .train import resolve_model_kwargs
    from .transfer import checkpoint_arguments, network_layers

    data = load_view(Paths(config).prepared, config.data)
    kwargs = checkpoint_arguments(resolve_model_kwargs(config.model.name, config.model.kwargs, data))
    body = len(network_layers(create_model(config.model.name, **kwargs))) - 1  # layers before the head
    ks = config.transfer.sweep_k or list(range(body + 1))

    def run(name: str, **transfer) -> dict[str, Any]:
        variant = dataclasses.replace(config, experiment=f"{config.experiment}/{name}",
                                      transfer=dataclasses.replace(config.transfer, **transfer))
        print(f"== {variant.experiment}", flush=True)
        cmd_train(variant, args)
        cmd_evaluate(variant, args)
        paths = Paths(variant)
        train, evaluation = read_json(paths.train_metrics, "train"), read_json(paths.eval, "evaluate")
        return {"test_accuracy": evaluation["test_accuracy"], "wall_seconds": train["wall_seconds"],
                "trainable_parameters": train["parameters"], "frozen_parameters": train["frozen_parameters"],
                "best_val_accuracy": train["best_val_accuracy"], "run_id": read_json(paths.run_info, "train")["run_id"]}

    runs = [{"freeze_k": k, **run(f"freeze{k}", policy="freeze_first_k", freeze_k=k)} for k in ks]
    scratch = run("scratch", policy="scratch")
    sweep = {"experiment": config.experiment, "layers": body + 1, "runs": runs,
             "scratch_test_accuracy": scratch["test_accuracy"], "scratch": scratch,
             "train_samples": len(data.y_train), "classes": data.classes}
    write_json(config.output_dir / "freeze_sweep.json", sweep)
    figure = report.plot_freeze_sweep(sweep, config.output_dir / "freeze_sweep.png")
    best = max(runs, key=lambda r: r["test_accuracy"])
    print(f"{config.experiment}: best k={best['freeze_k']} test accuracy {best['test_accuracy']:.4f}; "
          f"from scratch {scratch['test_accuracy']:.4f}; figure {figure}")


def experiment_names(params: str) -> list[str]:
    """The base experiment, then every named one in params (both maps)."""
    from .config import defined_experiments, read_params

    tree = read_params(params)
    return [tree.get("experiment", Config.experiment), *sorted(defined_experiments(tree))]


def cmd_separability(config: Config, args) -> None:
    """E8: for every experiment of ``--group``, the t-SNE of its final representation with the
    separating line of a linear classifier fitted on the 2-D points, in one figure."""
    import numpy as np

    from . import report
    from .analysis import linear_separability

    members = [c for c in (load_config(args.params, [*args.overrides, f"experiment={name}"])
                           for name in experiment_names(args.params)) if c.reference.get("group") == args.group]
    if not members:
        raise ValueError(f"no experiment in {args.params} has reference.group={args.group!r}")
    panels, rows = [], []
    for member in members:
        paths = Paths(member)
        if not paths.analysis.exists():
            raise FileNotFoundError(f"{paths.analysis} not found; run `cnnlab analyze -S experiment={member.experiment}`")
        arrays = np.load(paths.analysis)
        evaluation = read_json(paths.eval, "evaluate")
        separability = linear_separability(arrays["tsne_intermediate"], arrays["tsne_labels"],
                                           member.analysis.tsne_seed)
        panels.append({"name": member.experiment, "points": arrays["tsne_intermediate"],
                       "labels": arrays["tsne_labels"], "model_accuracy": evaluation["test_accuracy"],
                       "separability": separability})
        rows.append({"experiment": member.experiment, "policy": member.transfer.policy,
                     "test_accuracy": evaluation["test_accuracy"], "tsne_linear_accuracy": separability["accuracy"],
                     "line": separability.get("line"), "reference": member.reference})
    folder = Path(config.outputs_dir) / args.group
    write_json(folder / "separability.json", rows)
    figure = report.plot_separability(panels, evaluation["classes"], folder / "tsne_separability.png",
                                      f"{args.group}: t-SNE of the final representation, linear classifier on the map")
    for row in rows:
        print(f"{row['experiment']:28s} test acc {row['test_accuracy']:.4f}  linear on t-SNE "
              f"{row['tsne_linear_accuracy']:.4f}")
    print(f"figure: {figure}")


PIPELINE = ("prepare", "train", "evaluate", "analyze", "report", "export", "register")


def cmd_pipeline(config: Config, args) -> None:
    for stage in PIPELINE:
        print(f"== {stage}", flush=True)
        COMMANDS[stage][0](config, args)


COMMANDS: dict[str, tuple[Callable[[Config, Any], None], str]] = {
    "datasets": (cmd_datasets, "summary table of the datasets found (shape, samples per split)"),
    "models": (cmd_models, "registered models with their trainable-parameter counts"),
    "prepare": (cmd_prepare, "load data.name, split train/val (stratified), save the prepared artifact"),
    "train": (cmd_train, "fit the model; best/last checkpoints, history and an MLflow run"),
    "evaluate": (cmd_evaluate, "test-set metrics and confusion matrix from the best checkpoint"),
    "analyze": (cmd_analyze, "layer table, t-SNE, weight histograms, feature maps, examples (computed)"),
    "report": (cmd_report, "every figure from saved results + a Markdown report, logged to MLflow"),
    "export": (cmd_export, "ONNX export + onnx.checker + onnxruntime parity on the test set"),
    "register": (cmd_register, "register the model in MLflow with an alias (needs passed parity)"),
    "seeds": (cmd_seeds, "train + evaluate once per seed in `seeds`; writes mean ± std"),
    "compare": (cmd_compare, "table of every experiment against the catalogue's reference figures"),
    "search": (cmd_search, "Optuna search under search.param_budget; resumes an existing study"),
    "search-report": (cmd_search_report, "optimisation history, accuracy vs parameters, importances, parallel coordinates"),
    "retrain-best": (cmd_retrain_best, "retrain the search winner with every seed; export + register the best"),
    "pipeline": (cmd_pipeline, "run prepare..register in order without DVC"),
    "freeze-sweep": (cmd_freeze_sweep, "fine-tune with the first k layers frozen for each k, and from scratch"),
    "separability": (cmd_separability, "t-SNE maps of a --group's experiments with a linear classifier's line"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnlab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        p.add_argument("-S", "--set", dest="overrides", action="extend", nargs="+", default=[],
                       metavar="KEY=VALUE", help="override settings, as `dvc exp run -S` (repeatable)")
        if name == "datasets":
            p.add_argument("names", nargs="*", help="datasets to summarise (default: all registered)")
            p.add_argument("--per-class", action="store_true", help="also print per-class counts")
            p.add_argument("--json", help="also write the table as JSON to this file")
        if name == "separability":
            p.add_argument("--group", required=True, help="experiments whose reference.group is this (e.g. e8)")
        if name == "compare":
            p.add_argument("--tolerance", type=float, default=0.005,
                           help="|ours - reference| within this counts as a match (default 0.005 = 0.5 pp)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DatasetError
    from .export import ParityError
    from .models import ModelError
    from .train import TrainingDiverged

    expected = (ConfigError, DatasetError, ModelError, CheckpointError, TrainingDiverged, ParityError,
                FileNotFoundError, RuntimeError, ValueError)
    try:
        config = load_config(args.params, args.overrides)
        COMMANDS[args.command][0](config, args)
    except expected as err:
        if os.environ.get("CNNLAB_DEBUG"):
            raise
        print(f"cnnlab {args.command}: error: {err}", file=sys.stderr)
        print("(set CNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
