"""``cnnlab compare``: every catalogue experiment against its reference figure; proxy runs apart."""

from __future__ import annotations

from ..compare import Row, experiment_row, format_markdown
from ..config import Config, catalogue_for, load_config
from ..contract import comparison_files
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
    rows = [experiment_row(load_config(params, [*overrides, f"experiment={name}"]), catalogue.reference(name),
                           tolerance, why_missing) for name in catalogue.experiments()
            if catalogue.pipeline(name) != "demo"]
    json_path, table_path = comparison_files(config)
    write_json(json_path, [{**row.__dict__, "proxy": row.proxy} for row in rows])
    table = format_markdown(rows, tolerance)
    table_path.write_text(table)
    print(table)
    return rows
