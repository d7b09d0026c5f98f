"""What reaches the console: cnnlab's own INFO lines, other libraries' only from WARNING up.

    cnnlab --verbose train     # every library's INFO lines too (CNNLAB_VERBOSE=1 does the same)

openTSNE (per-phase timings), onnxscript and torch.onnx (export passes), alembic (store
migrations) and MLflow (system-metrics monitor, registry) log INFO lines on every run; they
bury the lines that matter. Warnings and errors always show. The setting travels in
$CNNLAB_VERBOSE, so worker processes (cnnlab.parallel) and DVC's stage commands inherit it.
"""

from __future__ import annotations

import logging
import os

from .lifecycle import interruption_behind

VERBOSE_ENV = "CNNLAB_VERBOSE"
CHATTY_LIBRARIES = ("openTSNE", "onnxscript", "onnx_ir", "torch.onnx", "torch.export", "alembic", "mlflow")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure_logging(verbose_flag: bool = False, process_name: bool = False) -> None:
    """Set up the console for a command (``verbose_flag``: its --verbose) or a worker process
    (``process_name``: each line names its process)."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    where = " [%(processName)s]" if process_name else ""
    logging.basicConfig(level=logging.INFO if verbose() else logging.WARNING,
                        format=f"%(levelname)s %(name)s{where}: %(message)s")
    logging.getLogger("cnnlab").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, NoTracebackForInterruptions) for f in handler.filters):
            handler.addFilter(NoTracebackForInterruptions())
    quiet_libraries()


class NoTracebackForInterruptions(logging.Filter):
    """Libraries log what Ctrl-C or SIGTERM stopped with its traceback (Optuna a trial it stopped,
    SQLAlchemy's pool a cursor it could not close once a query was cut short); an interruption is
    no bug, so the record keeps its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and interruption_behind(record.exc_info[1]):
            record.exc_info = None
        return True


def quiet_libraries() -> None:
    """WARNING and up from the chatty libraries (INFO too under --verbose). Called again after
    importing mlflow, whose import sets its own logger to INFO."""
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if verbose() else logging.WARNING)
    if not verbose():  # MLflow's tqdm bars while it validates a logged model's input example
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
