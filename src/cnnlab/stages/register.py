"""``cnnlab register``: the run's logged model as a registry version, the alias on the best validation score."""

from __future__ import annotations

from typing import Any

from ..checkpoint import load_checkpoint
from ..config import Config
from ..contract import RunFiles
from ..files import read_json, write_json
from ..hashing import file_digest
from ..tracking import register_model, reopen_run


def registered_name(config: Config) -> str:
    """``tracking.registered_model``, else the run's name with hyphens (e1-mnist-simple-cnn)."""
    return config.tracking.registered_model or config.name.replace("_", "-").replace("/", "-")


def register(config: Config) -> dict[str, Any]:
    files = RunFiles.of(config)
    parity = read_json(files.parity, "export")
    if not parity.get("passed"):
        raise RuntimeError(f"{files.parity} records a failed ONNX parity check; refusing to register")
    onnx_sha256 = file_digest(files.onnx)
    if parity.get("onnx_sha256") != onnx_sha256:
        raise RuntimeError(f"{files.onnx} is not the file whose parity was checked (sha256 {onnx_sha256}, "
                           f"{files.parity} records {parity.get('onnx_sha256') or 'none'}); it changed or is "
                           "corrupt: run `cnnlab export` again")
    evaluation = read_json(files.eval, "evaluate")
    validation = read_json(files.train_metrics, "train")["best_val_accuracy"]
    tracker = reopen_run(config, files.run_info, "cnnlab register")
    model_uri = tracker.client.get_run(tracker.run_id).data.tags.get("model.uri")
    if not model_uri:
        raise RuntimeError(f"MLflow run {tracker.run_id} has no logged model (tracking.log_model was false "
                           "when it trained); retrain with -S tracking.log_model=true")
    name = registered_name(config)
    # The alias goes to the best validation score: test accuracy is a tag, reported, never chosen on.
    record = register_model(tracker, model_uri, name, config.tracking.alias, "best_val_accuracy", validation,
                            {"onnx_parity": "passed", "run_id": tracker.run_id, "onnx_sha256": onnx_sha256,
                             "test_accuracy": str(evaluation["test_accuracy"])},
                            load_checkpoint(files.best)["weights_sha256"])
    write_json(files.registered, record)
    moved = f"alias '{record['alias']}' -> v{record['version']}" if record["alias_moved"] else \
        f"alias '{record['alias']}' stays on v{record['previous_alias_version']} (scores higher)"
    print(f"{'registered' if record['created'] else 'already registered:'} {name} v{record['version']} "
          f"(validation accuracy {validation:.4f}, test {evaluation['test_accuracy']:.4f}); {moved}")
    return record
