"""``cnnlab separability --group e8``: for every experiment of a reference group, the t-SNE of
its final representation with the separating line of a linear classifier fitted on the 2-D map."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import report as plots
from ..analysis import linear_separability
from ..config import Config, catalogue_for
from ..contract import RunFiles, group_files, group_members
from ..files import read_json, write_json


def separability(config: Config, group: str, params: str = "params.yaml") -> list[dict[str, Any]]:
    catalogue = catalogue_for(params)
    members = group_members(catalogue, group)
    if not members:
        raise ValueError(f"no experiment in {catalogue.path} has reference.group={group!r}")
    panels, rows = [], []
    for name in members:
        files = RunFiles.of(dataclasses.replace(config, experiment=name, run=""))
        if not files.analysis.exists():
            raise FileNotFoundError(f"{files.analysis} not found; run `cnnlab analyze -S experiment={name}`")
        arrays = np.load(files.analysis)
        evaluation = read_json(files.eval, "evaluate")
        separable = linear_separability(arrays["tsne_intermediate"], arrays["tsne_labels"], config.analysis.tsne_seed)
        panels.append({"name": name, "points": arrays["tsne_intermediate"], "labels": arrays["tsne_labels"],
                       "model_accuracy": evaluation["test_accuracy"], "separability": separable})
        rows.append({"experiment": name, "test_accuracy": evaluation["test_accuracy"],
                     "tsne_linear_accuracy": separable["accuracy"], "line": separable.get("line"),
                     "reference": catalogue.reference(name)})
    summary_path, figure_path = group_files(config, group)
    write_json(summary_path, rows)
    figure = plots.plot_separability(panels, evaluation["classes"], figure_path,
                                     f"{group}: t-SNE of the final representation, linear classifier on the map")
    for row in rows:
        print(f"{row['experiment']:28s} test acc {row['test_accuracy']:.4f}  linear on t-SNE "
              f"{row['tsne_linear_accuracy']:.4f}")
    print(f"figure: {figure}")
    return rows
