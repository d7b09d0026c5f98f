"""``cnnlab analyze``: everything the report draws, computed from the best checkpoint (no plotting)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import analysis
from ..checkpoint import checkpoint_tta, load_checkpoint, model_from_checkpoint
from ..config import Config
from ..contract import RunFiles
from ..data import load_view
from ..data.sampling import stratified_sample
from ..files import write_json
from ..runtime import resolve_runtime, set_threads
from ..train import BatchTransform, predict


def analyze(config: Config) -> dict[str, Any]:
    """Layer table, t-SNE of both representations, examples, feature maps, weight histograms."""
    files = RunFiles.of(config)
    settings = config.analysis
    set_threads(config.train.threads)
    payload = load_checkpoint(files.best)
    data = load_view(files.prepared, config.data)
    model = model_from_checkpoint(payload)
    norm = payload["normalization"]
    transform = BatchTransform(norm["mean"], norm["std"], resolve_runtime("cpu", "fp32"))

    rows = analysis.layer_summary(model, tuple(payload["input_shape"]))
    write_json(files.layers, rows)
    logits, features = predict(model, data.x_test, transform, config.train.eval_batch_size,
                               checkpoint_tta(payload))
    predicted = logits.argmax(1)
    sample = stratified_sample(data.y_test, min(settings.tsne_points, len(data.y_test)), settings.tsne_seed)
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
        files.analysis, tsne_intermediate=tsne_intermediate, tsne_final=tsne_final,
        tsne_labels=data.y_test[sample].numpy(), example_images=data.x_test[shown].numpy(),
        example_true=data.y_test[shown].numpy(), example_predicted=predicted[shown].numpy(),
        feature_map_image=chosen[0].numpy(), **{f"feature_map/{name}": m.numpy() for name, m in maps.items()})
    histograms = analysis.weight_histograms(model, settings.histogram_bins)
    histograms = {name: histograms[name] for name in analysis.evenly_spaced(list(histograms), settings.max_layers)}
    summary = {
        "classes": payload["classes"], "tsne_points": len(sample), "tsne_seconds": tsne_seconds,
        "examples": {k: len(v) for k, v in examples.items()}, "weight_histograms": histograms,
        "feature_map_layers": list(maps), "feature_map_image": settings.feature_map_image,
    }
    write_json(files.analysis_json, summary)
    print(f"analysis: {len(rows)} layers, t-SNE of {len(sample)} points x2 in {tsne_seconds:.0f}s, "
          f"{len(maps)} conv feature maps, {len(examples['correct'])}+{len(examples['wrong'])} examples")
    return summary
