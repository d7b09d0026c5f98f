"""The stage contract: what every stage reads and writes, declared once, and the output layout.

Each stage is declared here with the config keys it reads, the files it reads and the files
it writes; the source files it runs are derived from its module's imports. The dvc.yaml
files are generated from these declarations (``cnnlab dvc-yaml``), so a stage's DVC params and
deps cannot drift from what the code reads: a test runs every stage on tiny data while
recording which config keys it touches and which cnnlab modules it imports, and fails on
anything undeclared.

    files = RunFiles.of(config)        # every path of one run
    STAGES["train"].params()           # ["data.name", ..., "train.epochs", ...]
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path

from .config import SAMPLERS, Config

PACKAGE_ROOT = Path(__file__).resolve().parent
SOURCE_PREFIX = "src/cnnlab"  # the package's path in the repository, as dvc.yaml names it

# Settings that change how fast or where a run is logged, never its results: not DVC params,
# so turning a progress bar off does not retrain. The tracer test allows stages to read them.
UNTRACKED_KEYS = (
    "train.threads",  # intra-op threads: speed only (the worker split is cnnlab.parallel's)
    "train.progress",  # progress bars
    "seed_workers",  # seeds trained at once; each seed's result is the same either way (tests/test_parallel)
    "tracking.uri",  # where the run is logged
    "tracking.experiment",  # the MLflow experiment it is logged under
    "experiment", "run",  # the run's name: it is in every output path already
    "models_dir", "outputs_dir",  # where outputs go: the paths themselves
    "data.datasets_dir", "data.raw_dir", "data.download",  # where raw data is looked for; its hash is recorded
    "server",  # `cnnlab server`'s store, address and pools: where runs are logged, never what they are
)


@dataclass(frozen=True)
class RunFiles:
    """Every file one run's stages read or write."""

    prepared: Path  # the prepared dataset (shared by every run of that dataset)
    data_summary: Path
    config: Path  # the run's resolved settings
    run_info: Path  # the MLflow run the later stages log into
    history: Path
    batch_losses: Path
    train_metrics: Path
    eval: Path
    predictions: Path
    analysis: Path  # t-SNE points, feature maps, example images
    analysis_json: Path  # weight histograms, example picks
    layers: Path
    figures: Path
    report: Path
    parity: Path
    registered: Path
    seeds: Path
    freeze_sweep: Path
    freeze_sweep_figure: Path
    best: Path
    last: Path
    onnx: Path
    timings: Path  # each stage's last wall time and machine (not a DVC output: every stage updates it)

    @classmethod
    def of(cls, config: Config) -> "RunFiles":
        from .data import prepared_path

        out, models = config.output_dir, config.model_dir
        prepared = prepared_path(config.data.prepared_dir, config.data.name, config.data.image_size)
        return cls(
            prepared=prepared, data_summary=prepared.with_suffix(".json"), config=out / "config.yaml",
            run_info=out / "run.json", history=out / "history.json", batch_losses=out / "batch_losses.json",
            train_metrics=out / "train_metrics.json", eval=out / "eval.json", predictions=out / "predictions.json",
            analysis=out / "analysis.npz", analysis_json=out / "analysis.json", layers=out / "layers.json",
            figures=out / "figures", report=out / "report.md", parity=out / "onnx_parity.json",
            registered=out / "registered.json", seeds=out / "seeds.json", freeze_sweep=out / "freeze_sweep.json",
            freeze_sweep_figure=out / "freeze_sweep.png", best=models / "best.pt", last=models / "last.pt",
            onnx=models / "model.onnx", timings=out / "timings.json",
        )


@dataclass(frozen=True)
class StudyFiles:
    """The files of one Optuna study (``search.study``) and of its retrained winner."""

    search_summary: Path
    search_figures: Path
    winner_models: Path
    winner_seeds: Path
    search_comparison: Path  # `cnnlab search-compare`: both samplers and the hand-designed candidate
    search_comparison_figure: Path

    @classmethod
    def of(cls, config: Config) -> "StudyFiles":
        study, outputs = config.search.study, Path(config.outputs_dir)
        return cls(search_summary=outputs / study / "search.json",
                   search_figures=outputs / study / "search_figures",
                   winner_models=Path(config.models_dir) / winner_name(study),
                   winner_seeds=outputs / winner_name(study) / "seeds.json",
                   search_comparison=outputs / study / "search_comparison.json",
                   search_comparison_figure=outputs / study / "search_comparison.png")


@dataclass(frozen=True)
class ControlFiles:
    """The files of a study's control: the same settings searched by the other sampler."""

    control_summary: Path  # `cnnlab search-control`: its search.json
    control_winner_seeds: Path  # `cnnlab retrain-control`: its winner retrained over the seeds

    @classmethod
    def of(cls, config: Config) -> "ControlFiles":
        control = control_study(config.search.study, config.search.sampler)
        return cls(control_summary=Path(config.outputs_dir) / control / "search.json",
                   control_winner_seeds=Path(config.outputs_dir) / winner_name(control) / "seeds.json")


def file_path(config: Config, name: str) -> Path:
    """A RunFiles, StudyFiles or ControlFiles field of ``config``'s run by name."""
    for layout in (RunFiles, StudyFiles, ControlFiles):
        if name in {field.name for field in dataclasses.fields(layout)}:
            return getattr(layout.of(config), name)
    raise KeyError(f"no file named {name!r} in the output layout")


def winner_name(study: str) -> str:
    """The run name of a study's retrained winner."""
    return f"{study}_winner"


def control_sampler(sampler: str) -> str:
    """The sampler a study is held against at the same epoch budget: the other one (TPE <-> random)."""
    return next(other for other in SAMPLERS if other != sampler)


def control_study(study: str, sampler: str) -> str:
    """The name of ``study``'s control: the same settings searched by the other sampler."""
    return f"{study}_{control_sampler(sampler)}"


def comparison_files(config: Config) -> tuple[Path, Path]:
    return Path(config.outputs_dir) / "comparison.json", Path(config.outputs_dir) / "comparison.md"


def group_files(config: Config, group: str) -> tuple[Path, Path]:
    """E8's separability summary and figure for the experiments of one reference group."""
    folder = Path(config.outputs_dir) / group
    return folder / "separability.json", folder / "tsne_separability.png"


@dataclass(frozen=True)
class Output:
    """A file a stage writes. ``cache=False`` files are committed to git (small JSON and figures);
    the rest go to the DVC cache."""

    file: str  # a RunFiles or StudyFiles field
    cache: bool = True
    role: str = "out"  # out | metric | plot
    plot: tuple[tuple[str, str], ...] = ()  # dvc plot options, e.g. (("x", "epoch"),)


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # cnnlab module holding the stage function, e.g. "stages.train"
    function: str
    summary: str  # one line for `cnnlab --help`
    reads: tuple[str, ...]  # config keys or whole sections it reads
    inputs: tuple[str, ...] = ()  # RunFiles or StudyFiles fields it reads
    outputs: tuple[Output, ...] = ()
    skip: tuple[str, ...] = ()  # keys of a declared section that it does not read (kept out of its params)

    def params(self) -> list[str]:
        """The DVC params: every declared key, sections expanded, untracked keys left out."""
        keys: list[str] = []
        for key in self.reads:
            keys += [k for k in expand(key) if k not in UNTRACKED_KEYS and k not in self.skip]
        return sorted(dict.fromkeys(keys))

    def sections(self) -> set[str]:
        """Top-level keys it reads: which parts of a catalogue entry are its params."""
        return {key.split(".")[0] for key in self.reads}

    def covers(self, key: str) -> bool:
        """Whether reading ``key`` is declared (directly, through its section, or untracked)."""
        return any(key == r or key.startswith(r + ".") for r in (*self.reads, *UNTRACKED_KEYS)) \
            and key not in self.skip

    def code(self) -> list[str]:
        return list(source_closure(self.module))


def expand(key: str) -> list[str]:
    """``train`` -> ``train.epochs``, ``train.batch_size``, ... (one level: nested sections stay whole)."""
    node: typing.Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints:
            raise KeyError(f"stage contract names {key!r}, which is not a setting")
        node = hints[part]
    if dataclasses.is_dataclass(node) and "." not in key:
        return [f"{key}.{f.name}" for f in dataclasses.fields(node)]
    return [key]


@functools.lru_cache(maxsize=None)  # dvc-yaml asks for each stage module's closure once per entry
def source_closure(module: str) -> tuple[str, ...]:
    """Every cnnlab source file ``module`` imports, directly or not, lazily inside functions too
    (any import statement anywhere in a file counts: an over-approximation is safe)."""
    seen: set[Path] = set()
    todo = [module_file(module), *packages_of(module)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [f for f in imported_files(path) if f not in seen]
    # A subpackage whose every file is imported is named as its folder: shorter, and a module
    # added to it later is a dependency too.
    whole = {d for d in {p.parent for p in seen} if d != PACKAGE_ROOT and set(d.glob("*.py")) <= seen}
    names = {p.parent if p.parent in whole else p for p in seen}
    return tuple(sorted(f"{SOURCE_PREFIX}/{p.relative_to(PACKAGE_ROOT).as_posix()}" for p in names))


def packages_of(dotted: str) -> list[Path]:
    """The __init__ files that run before ``dotted`` is imported (cnnlab's, then each subpackage's)."""
    parts = dotted.split(".")
    files = [module_file(".".join(parts[:depth])) if depth else PACKAGE_ROOT / "__init__.py"
             for depth in range(len(parts))]
    return [f for f in files if f.exists()]  # cnnlab itself is a namespace package


def module_file(dotted: str) -> Path:
    path = PACKAGE_ROOT.joinpath(*dotted.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_files(path: Path) -> list[Path]:
    package = path.parent.relative_to(PACKAGE_ROOT).parts
    found: list[Path] = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            stem = [*base, *(node.module.split(".") if node.module else [])]
            names = [".".join(stem)] + [".".join([*stem, alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cnnlab"):
            stem = node.module.split(".")[1:]
            names = [".".join(stem)] + [".".join([*stem, alias.name]) for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [".".join(a.name.split(".")[1:]) for a in node.names if a.name.startswith("cnnlab.")]
        for name in names:
            # every package on the way is imported too (its __init__ runs)
            parts = name.split(".") if name else []
            for depth in range(len(parts) + 1):
                candidate = module_file(".".join(parts[:depth])) if depth else PACKAGE_ROOT / "__init__.py"
                if candidate.exists():
                    found.append(candidate)
    return found


# What a training run's model depends on: the dataset view, the model, the recipe, the transfer
# policy. `tracking.log_model` decides whether the model is logged for `register`.
# Reading the prepared data back applies the view settings (classes, subset, labelled budget) and the paths.
DATA_VIEW = ("data.name", "data.prepared_dir", "data.image_size", "data.classes", "data.train_subset",
             "data.split_seed", "data.labelled_budget", "data.budget_val_fraction")
TRAINING_READS = (*DATA_VIEW, "model", "train", "transfer", "tracking.log_model")
# Where the prepared dataset is: every RunFiles names it, so stages that only read results
# still read these to locate their files.
PREPARED_PATH = ("data.name", "data.image_size", "data.prepared_dir")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", "stages.prepare", "prepare",
          "load data.name, split train/val (stratified), save the prepared artifact",
          reads=("data",), skip=("data.classes", "data.train_subset", "data.labelled_budget", "data.budget_val_fraction"),
          outputs=(Output("prepared"), Output("data_summary", cache=False))),
    Stage("train", "stages.train", "train", "fit the model; best/last checkpoints, history and an MLflow run",
          reads=TRAINING_READS, skip=("transfer.sweep_k",), inputs=("prepared",),
          outputs=(Output("best"), Output("last"), Output("batch_losses"), Output("config", cache=False),
                   Output("run_info", cache=False), Output("train_metrics", cache=False, role="metric"),
                   Output("history", cache=False, role="plot", plot=(("x", "epoch"),)))),
    Stage("evaluate", "stages.evaluate", "evaluate", "test-set metrics and confusion matrix from the best checkpoint",
          reads=(*DATA_VIEW, "train.eval_batch_size", "train.device"), inputs=("best", "prepared", "run_info"),
          outputs=(Output("eval", cache=False, role="metric"),
                   Output("predictions", role="plot",
                          plot=(("template", "confusion"), ("x", "actual"), ("y", "predicted"))))),
    Stage("analyze", "stages.analyze", "analyze",
          "layer table, t-SNE, weight histograms, feature maps, examples (computed)",
          reads=(*DATA_VIEW, "analysis", "train.eval_batch_size"), inputs=("best", "prepared"),
          outputs=(Output("analysis"), Output("analysis_json", cache=False), Output("layers", cache=False))),
    Stage("report", "stages.report", "report",
          "every figure from saved results + a Markdown report, logged to MLflow",
          reads=PREPARED_PATH, inputs=("history", "batch_losses", "eval", "analysis", "analysis_json", "layers",
                            "train_metrics", "config", "run_info"),
          outputs=(Output("report", cache=False), Output("figures", cache=False, role="plot"))),
    Stage("export", "stages.export", "export", "ONNX export + onnx.checker + onnxruntime parity on the test set",
          reads=(*DATA_VIEW, "export"), inputs=("best", "prepared", "run_info"),
          outputs=(Output("onnx"), Output("parity", cache=False, role="metric"))),
    Stage("register", "stages.register", "register",
          "register the model in MLflow with an alias (needs passed parity)",
          reads=(*PREPARED_PATH, "tracking.registered_model", "tracking.alias"),
          inputs=("parity", "eval", "train_metrics", "best", "run_info"),
          outputs=(Output("registered", cache=False),)),
)}

# The main pipeline's stages, in order (dvc.yaml; `cnnlab pipeline` runs them without DVC).
PIPELINE = ("prepare", "train", "evaluate", "analyze", "report", "export", "register")
# What the catalogue pipeline runs for each of its entries (experiments/dvc.yaml).
CATALOGUE_RUN = ("train", "evaluate", "analyze", "report")

# Stages over a study, a group or the whole catalogue: declared the same way.
SWEEPS: dict[str, Stage] = {s.name: s for s in (
    Stage("search", "stages.search", "search", "Optuna search under search.param_budget; resumes an existing study",
          reads=("search", *TRAINING_READS), inputs=("prepared",),
          outputs=(Output("search_summary", cache=False),)),
    Stage("search_report", "stages.search", "search_report",
          "optimisation history, accuracy vs parameters, importances, parallel coordinates",
          reads=("search.study",), inputs=("search_summary",),
          outputs=(Output("search_figures", cache=False, role="plot"),)),
    Stage("retrain_best", "stages.search", "retrain_best",
          "retrain the search winner with every seed; export + register the seed chosen on validation",
          reads=("seeds", "search.study", "search.param_budget", *TRAINING_READS, "export", "tracking"),
          inputs=("search_summary", "prepared"),
          outputs=(Output("winner_models"), Output("winner_seeds", cache=False, role="metric"))),
    Stage("search_control", "stages.search_compare", "search_control",
          "the same study with the other sampler (TPE <-> random) at the same epoch budget, no enqueued trial",
          reads=("search", *TRAINING_READS), inputs=("prepared",),
          outputs=(Output("control_summary", cache=False),)),
    Stage("retrain_control", "stages.search_compare", "retrain_control",
          "retrain the control study's winner over the seeds, as retrain-best does the study's own",
          reads=("seeds", "search.study", "search.sampler", "search.param_budget", *TRAINING_READS,
                 "train.eval_batch_size"),
          inputs=("control_summary", "prepared"),
          outputs=(Output("control_winner_seeds", cache=False, role="metric"),)),
    Stage("search_compare", "stages.search_compare", "search_compare",
          "table + plot: both samplers' retrained winners against the hand-designed model (its `seeds`)",
          # PREPARED_PATH: the hand-designed run's seeds.json is found through RunFiles, which reads it
          reads=("seeds", "search.study", "search.sampler", "search.epoch_budget", "search.param_budget",
                 "train.epochs", "model.kwargs", *PREPARED_PATH),
          inputs=("search_summary", "winner_seeds", "control_summary", "control_winner_seeds", "seeds"),
          outputs=(Output("search_comparison", cache=False, role="metric"),
                   Output("search_comparison_figure", cache=False, role="plot"))),
    Stage("seeds", "stages.seeds", "seeds", "train + evaluate once per seed in `seeds`; writes mean ± std",
          reads=("seeds", *TRAINING_READS, "train.eval_batch_size"),
          inputs=("prepared",), outputs=(Output("seeds", cache=False, role="metric"),)),
    Stage("freeze_sweep", "stages.freeze_sweep", "freeze_sweep",
          "fine-tune with the first k layers frozen for each k, and from scratch",
          reads=TRAINING_READS, inputs=("prepared",),
          outputs=(Output("freeze_sweep", cache=False, role="metric"),
                   Output("freeze_sweep_figure", cache=False, role="plot"))),
    Stage("separability", "stages.separability", "separability",
          "t-SNE maps of a --group's experiments with a linear classifier's line",
          reads=(*PREPARED_PATH, "analysis.tsne_seed")),
    Stage("compare", "stages.compare", "compare",
          "table of every experiment against the catalogue's reference figures",
          # data: where to look for a missing experiment's dataset; transfer: what each row ran
          reads=("data", "search.study", "transfer")),
)}


def stage(name: str) -> Stage:
    """A pipeline stage or a sweep, by name."""
    return STAGES[name] if name in STAGES else SWEEPS[name]
