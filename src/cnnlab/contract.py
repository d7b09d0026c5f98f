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

from .config import SAMPLERS, Catalogue, Config, catalogue_for, load_config

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
    freeze_runs: Path  # `cnnlab freeze-sweep`: one run per k and one from scratch, each in a folder here
    freeze_models: Path  # and their checkpoints

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
            freeze_runs=out / FREEZE_RUNS, freeze_models=models / FREEZE_RUNS,
        )


FREEZE_RUNS = "freeze_runs"


def freeze_run(name: str, variant: str) -> str:
    """The run name of one variant (``freeze<k>``, ``scratch``) of run ``name``'s freeze sweep."""
    return f"{name}/{FREEZE_RUNS}/{variant}"


@dataclass(frozen=True)
class SeedFiles:
    """Each seed's run (``<run>/seed<k>``, a RunFiles of its own) of the sweeps over ``seeds``:
    a run's own (`cnnlab seeds`), a study's winner's (`retrain-best`) and its control's winner's
    (`retrain-control`). Apart from RunFiles, so that only these stages depend on ``seeds``."""

    seed_runs: tuple[Path, ...]
    seed_models: tuple[Path, ...]
    winner_runs: tuple[Path, ...]  # the chosen one is also exported and registered
    control_winner_runs: tuple[Path, ...]

    @classmethod
    def of(cls, config: Config) -> "SeedFiles":
        outputs = Path(config.outputs_dir)
        control = winner_name(control_study(config.search.study, config.search.sampler))
        return cls(seed_runs=tuple(outputs / seed_run(config.name, s) for s in config.seeds),
                   seed_models=tuple(Path(config.models_dir) / seed_run(config.name, s) for s in config.seeds),
                   winner_runs=tuple(outputs / seed_run(winner_name(config.search.study), s) for s in config.seeds),
                   control_winner_runs=tuple(outputs / seed_run(control, s) for s in config.seeds))


@dataclass(frozen=True)
class StudyFiles:
    """The files of one Optuna study (``search.study``) and of its retrained winner."""

    search_summary: Path
    search_figures: Path
    winner_models: Path
    winner_seeds: Path
    trial_models: Path  # each trial's checkpoints: by-products of fitting, never read (scratch, not in DVC)
    search_comparison: Path  # `cnnlab search-compare`: both samplers and the hand-designed candidate
    search_comparison_figure: Path

    @classmethod
    def of(cls, config: Config) -> "StudyFiles":
        study, outputs = config.search.study, Path(config.outputs_dir)
        return cls(search_summary=outputs / study / "search.json",
                   search_figures=outputs / study / "search_figures",
                   winner_models=Path(config.models_dir) / winner_name(study),
                   winner_seeds=outputs / winner_name(study) / "seeds.json",
                   trial_models=Path(config.models_dir) / trials_name(study),
                   search_comparison=outputs / study / "search_comparison.json",
                   search_comparison_figure=outputs / study / "search_comparison.png")


@dataclass(frozen=True)
class ControlFiles:
    """The files of a study's control: the same settings searched by the other sampler."""

    control_summary: Path  # `cnnlab search-control`: its search.json
    control_winner_seeds: Path  # `cnnlab retrain-control`: its winner retrained over the seeds
    control_winner_models: Path  # their checkpoints
    control_trial_models: Path

    @classmethod
    def of(cls, config: Config) -> "ControlFiles":
        control = control_study(config.search.study, config.search.sampler)
        winner, outputs = winner_name(control), Path(config.outputs_dir)
        return cls(control_summary=outputs / control / "search.json",
                   control_winner_seeds=outputs / winner / "seeds.json",
                   control_winner_models=Path(config.models_dir) / winner,
                   control_trial_models=Path(config.models_dir) / trials_name(control))


def file_path(config: Config, name: str) -> Path:
    """A single-file RunFiles, StudyFiles or ControlFiles field of ``config``'s run by name."""
    found = layout_field(config, name)
    if isinstance(found, tuple):
        raise KeyError(f"{name!r} names one path per seed: use file_paths")
    return found


def file_paths(config: Config, name: str) -> list[Path]:
    """A layout field's paths: one, or one per seed (``seed_runs``, ``winner_runs``, ...)."""
    found = layout_field(config, name)
    return list(found) if isinstance(found, tuple) else [found]


def layout_field(config: Config, name: str) -> Path | tuple[Path, ...]:
    for layout in (RunFiles, StudyFiles, ControlFiles, SeedFiles):
        if name in {field.name for field in dataclasses.fields(layout)}:
            return getattr(layout.of(config), name)
    raise KeyError(f"no file named {name!r} in the output layout")


def winner_name(study: str) -> str:
    """The run name of a study's retrained winner."""
    return f"{study}_winner"


def trials_name(study: str) -> str:
    """The run name under which a study's trials run (``<study>_trials/trial<n>``)."""
    return f"{study}_trials"


def seed_run(name: str, seed: int) -> str:
    """The run name of one seed of run ``name`` (``cnnlab seeds``, ``retrain-best``)."""
    return f"{name}/seed{seed}"


def control_sampler(sampler: str) -> str:
    """The sampler a study is held against at the same epoch budget: the other one (TPE <-> random)."""
    return next(other for other in SAMPLERS if other != sampler)


def control_study(study: str, sampler: str) -> str:
    """The name of ``study``'s control: the same settings searched by the other sampler."""
    return f"{study}_{control_sampler(sampler)}"


# Catalogue entries that also run sweeps over their own settings (experiments/dvc.yaml).
# E5's three arms (its study, the other sampler's, its hand-designed model over the seeds) are
# stages of their own, so each is cached and resumed apart from the others.
# The main pipeline's entry (E1) has its sweep there too, not in dvc.yaml: a `dvc exp run` of a
# main-pipeline variant must not retrain every seed.
ENTRY_SWEEPS = {"e1_mnist_simple_cnn": ("seeds",),
                "e1_fast": ("seeds",),
                "e5_search": ("search", "search_report", "retrain_best", "search_control", "retrain_control",
                              "seeds", "search_compare"),
                "e6_finetune": ("freeze_sweep",)}
# The generated pipelines that run an entry's stages (catalogue.yaml's `pipeline:`); `none`
# runs nowhere and `demo` writes nothing of record, so `cnnlab compare` reads neither.
RECORDED_PIPELINES = ("main", "catalogue")


@dataclass(frozen=True)
class EntryResults:
    """The files of one catalogue entry that `cnnlab compare` reads, and so the compare stage's
    deps: nothing else of the entry is read, so a result DVC does not know of never reaches the
    table. Its headline figure comes from its seeds sweep (else, for a study, its retrained
    winner's seeds) or from its single run; what ran, from that run or the first seed's."""

    run: RunFiles  # the entry's own train/evaluate run
    seeds: Path | None
    described: RunFiles  # the run whose history, eval and train metrics say what ran
    freeze_sweep: Path | None

    @classmethod
    def of(cls, config: Config, sweeps: tuple[str, ...]) -> "EntryResults":
        run, first = RunFiles.of(config), config.seeds[0]
        seeds, described = None, run
        if "seeds" in sweeps:
            seeds, described = run.seeds, RunFiles.of(dataclasses.replace(config, run=seed_run(config.name, first)))
        elif "retrain_best" in sweeps:
            winner = winner_name(config.search.study)
            seeds = StudyFiles.of(config).winner_seeds
            described = RunFiles.of(dataclasses.replace(config, run=seed_run(winner, first)))
        return cls(run, seeds, described, run.freeze_sweep if "freeze_sweep" in sweeps else None)

    def files(self) -> list[Path]:
        found = [self.run.eval, self.run.train_metrics, self.seeds, self.described.history, self.described.eval,
                 self.described.train_metrics, self.freeze_sweep]
        return list(dict.fromkeys(f for f in found if f is not None))


def entry_results(config: Config, pipeline: str) -> EntryResults | None:
    """What compare reads of ``config``'s entry, run by ``pipeline``; None: nothing (it runs nowhere)."""
    if pipeline not in RECORDED_PIPELINES:
        return None
    return EntryResults.of(config, ENTRY_SWEEPS.get(config.experiment, ()))


def compare_inputs(params: str | Path, overrides: typing.Sequence[str] = ()) -> list[Path]:
    """Every file `cnnlab compare` reads: each recorded entry's results."""
    catalogue = catalogue_for(params)
    found: list[Path] = []
    for name in catalogue.experiments():
        results = entry_results(load_config(params, [*overrides, f"experiment={name}"]), catalogue.pipeline(name))
        found += results.files() if results else []
    return found


def group_members(catalogue: Catalogue, group: str) -> list[str]:
    """The experiments of a reference group (E8's separability figure puts them on one map)."""
    return [name for name in catalogue.experiments() if catalogue.reference(name).get("group") == group]


def group_inputs(config: Config, members: typing.Sequence[str]) -> list[Path]:
    """What `cnnlab separability` reads of each member: its t-SNE points and its test metrics."""
    runs = [RunFiles.of(dataclasses.replace(config, experiment=name, run="")) for name in members]
    return [path for files in runs for path in (files.analysis, files.eval)]


def comparison_files(config: Config) -> tuple[Path, Path]:
    return Path(config.outputs_dir) / "comparison.json", Path(config.outputs_dir) / "comparison.md"


def group_files(config: Config, group: str) -> tuple[Path, Path]:
    """E8's separability summary and figure for the experiments of one reference group."""
    folder = Path(config.outputs_dir) / group
    return folder / "separability.json", folder / "tsne_separability.png"


@dataclass(frozen=True)
class Output:
    """A file a stage writes. ``cache=False`` files are committed to git (small JSON and figures);
    the rest go to the DVC cache. ``scratch`` ones are by-products no stage reads, kept out of
    DVC (and out of git) altogether."""

    file: str  # a RunFiles, StudyFiles, ControlFiles or SeedFiles field (one path, or one per seed)
    cache: bool = True
    role: str = "out"  # out | metric | plot | scratch
    plot: tuple[tuple[str, str], ...] = ()  # dvc plot options, e.g. (("x", "epoch"),)


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # cnnlab module holding the stage function, e.g. "stages.train"
    function: str
    summary: str  # one line for `cnnlab --help`
    reads: tuple[str, ...]  # config keys or whole sections it reads
    inputs: tuple[str, ...] = ()  # RunFiles, StudyFiles or ControlFiles fields it reads
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
          reads=TRAINING_READS, skip=("transfer.sweep_k",), inputs=("prepared", "data_summary"),
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
          inputs=("parity", "eval", "train_metrics", "best", "onnx", "run_info"),
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
          outputs=(Output("search_summary", cache=False), Output("trial_models", role="scratch"))),
    Stage("search_report", "stages.search", "search_report",
          "optimisation history, accuracy vs parameters, importances, parallel coordinates",
          reads=("search.study",), inputs=("search_summary",),
          outputs=(Output("search_figures", cache=False, role="plot"),)),
    Stage("retrain_best", "stages.search", "retrain_best",
          "retrain the search winner with every seed; export + register the seed chosen on validation",
          reads=("seeds", "search.study", "search.param_budget", *TRAINING_READS, "export", "tracking"),
          inputs=("search_summary", "prepared", "data_summary"),
          outputs=(Output("winner_models"), Output("winner_seeds", cache=False, role="metric"),
                   Output("winner_runs", cache=False))),
    Stage("search_control", "stages.search_compare", "search_control",
          "the same study with the other sampler (TPE <-> random) at the same epoch budget, no enqueued trial",
          reads=("search", *TRAINING_READS), inputs=("prepared",),
          outputs=(Output("control_summary", cache=False), Output("control_trial_models", role="scratch"))),
    Stage("retrain_control", "stages.search_compare", "retrain_control",
          "retrain the control study's winner over the seeds, as retrain-best does the study's own",
          reads=("seeds", "search.study", "search.sampler", "search.param_budget", *TRAINING_READS,
                 "train.eval_batch_size"),
          inputs=("control_summary", "prepared", "data_summary"),
          outputs=(Output("control_winner_seeds", cache=False, role="metric"), Output("control_winner_runs", cache=False),
                   Output("control_winner_models"))),
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
          inputs=("prepared", "data_summary"),
          outputs=(Output("seeds", cache=False, role="metric"), Output("seed_runs", cache=False),
                   Output("seed_models"))),
    Stage("freeze_sweep", "stages.freeze_sweep", "freeze_sweep",
          "fine-tune with the first k layers frozen for each k, and from scratch",
          reads=TRAINING_READS, inputs=("prepared", "data_summary"),
          outputs=(Output("freeze_sweep", cache=False, role="metric"),
                   Output("freeze_sweep_figure", cache=False, role="plot"), Output("freeze_runs", cache=False),
                   Output("freeze_models"))),
    Stage("separability", "stages.separability", "separability",
          "t-SNE maps of a --group's experiments with a linear classifier's line",
          reads=(*PREPARED_PATH, "analysis.tsne_seed")),
    Stage("compare", "stages.compare", "compare",
          "table of every experiment against the catalogue's reference figures",
          # data: where to look for a missing experiment's dataset; transfer: what each row ran;
          # seeds: which seed's run says what ran (contract.EntryResults)
          reads=("data", "search.study", "transfer", "seeds")),
)}


def stage(name: str) -> Stage:
    """A pipeline stage or a sweep, by name."""
    return STAGES[name] if name in STAGES else SWEEPS[name]
