"""``cnnlab evaluate``: test-set metrics of the best checkpoint, reported in fp32."""

from __future__ import annotations

from typing import Any

from ..checkpoint import checkpoint_tta, load_checkpoint, model_from_checkpoint
from ..config import Config
from ..contract import RunFiles
from ..data import load_view
from ..files import write_json
from ..metrics import classification_summary
from ..runtime import resolve_runtime, set_threads
from ..tracking import reopen_run
from ..train import BatchTransform, predict


def evaluate(config: Config) -> dict[str, Any]:
    """What eval.json holds: accuracy, loss, errors, confusion matrix, most-confused pairs."""
    files = RunFiles.of(config)
    set_threads(config.train.threads)
    payload = load_checkpoint(files.best)
    data = load_view(files.prepared, config.data)
    runtime = resolve_runtime(config.train.device, "fp32")  # reported numbers are fp32
    model = model_from_checkpoint(payload).to(runtime.device)
    norm = payload["normalization"]
    transform = BatchTransform(norm["mean"], norm["std"], runtime)
    tta = checkpoint_tta(payload)
    logits, _ = predict(model, data.x_test, transform, config.train.eval_batch_size, tta)
    summary = classification_summary(logits, data.y_test, payload["classes"])
    report = {"test_accuracy": summary["accuracy"], "test_loss": summary["loss"],
              "test_errors": summary["errors"], "test_samples": summary["samples"], "test_time_augmentation": tta,
              "best_epoch": payload["epoch"], **parameter_counts(payload),
              "most_confused": summary["most_confused"], "per_class_accuracy": summary["per_class_accuracy"],
              "confusion_matrix": summary["confusion_matrix"], "classes": payload["classes"]}
    if tta != "none":  # what TTA adds, measured on the same checkpoint
        plain, _ = predict(model, data.x_test, transform, config.train.eval_batch_size)
        report["test_accuracy_without_tta"] = (plain.argmax(1) == data.y_test).float().mean().item()
    tracker = reopen_run(config, files.run_info, "cnnlab evaluate")  # before writing: no run, no new results
    write_json(files.eval, report)
    predicted = logits.argmax(1).tolist()
    write_json(files.predictions, [{"actual": payload["classes"][t], "predicted": payload["classes"][p]}
                                   for t, p in zip(data.y_test.tolist(), predicted)])
    tracker.log_metrics({k: report[k] for k in ("test_accuracy", "test_loss", "test_errors",
                                                 "test_accuracy_without_tta") if k in report})
    tracker.log_artifact(files.eval)
    tracker.log_data(data, ["test"])
    print(f"test accuracy {report['test_accuracy']:.4f} ({report['test_errors']} errors of "
          f"{report['test_samples']}); most confused: "
          + ", ".join(f"{p['true']}->{p['predicted']} ({p['count']})" for p in report["most_confused"][:3]))
    return report


def parameter_counts(payload: dict[str, Any]) -> dict[str, int]:
    """A checkpoint's parameter counts (those written before the split count held one "parameters")."""
    trainable = payload.get("trainable_parameters", payload.get("parameters"))
    return {"total_parameters": payload.get("total_parameters", trainable), "trainable_parameters": trainable}
