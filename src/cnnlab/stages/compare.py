"""``cnnlab compare``: every catalogue experiment against its reference figure; proxy runs apart."""

from __future__ import annotations

import json

from ..compare import Row, experiment_row, format_freeze_sweep, format_markdown
from ..config import Config, catalogue_for, load_config
from ..contract import comparison_files, entry_results
from ..data import DatasetError, SourceContext, load_raw
from ..files import write_json


def compare(config: Config, tolerance: float, params: str = "params.yaml", overrides: list[str] = ()) -> list[Row]:
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

    catalogue = catalogue_for(params)
    configs = {name: load_config(params, [*overrides, f"experiment={name}"]) for name in catalogue.experiments()
               if catalogue.pipeline(name) != "demo"}
    # only the files the compare stage declares (its DVC deps), whatever else lies in outputs/
    results = {name: entry_results(config, catalogue.pipeline(name)) for name, config in configs.items()}
    rows = [experiment_row(config, results[name], catalogue.reference(name), tolerance, why_missing)
            for name, config in configs.items()]
    json_path, table_path = comparison_files(config)
    write_json(json_path, [{**row.__dict__, "proxy": row.proxy} for row in rows])
    table = format_markdown(rows, tolerance)
    for entry in results.values():  # each freeze sweep run (E6), from its freeze_sweep.json
        if entry and entry.freeze_sweep and entry.freeze_sweep.exists():
            table += "\n" + format_freeze_sweep(json.loads(entry.freeze_sweep.read_text()))
    table_path.write_text(table)
    print(table)
    return rows
