"""How a command ends, and who owns a run: no MLflow run is left RUNNING by a command that ended.

``cli.main`` runs every command inside ``signals_as_interrupts()``: SIGTERM (what ``kill``,
DVC and job schedulers send) then raises ``Terminated``, a ``KeyboardInterrupt``, so it takes
the Ctrl-C path: the run ends KILLED with the reason as its ``cnnlab.failure`` tag, one line
says how to resume, and the exit code is 128 + the signal (130 for SIGINT, 143 for SIGTERM).

A process killed without a word (``kill -9``, power loss) cannot end its run, so every run
records its owner (``cnnlab.pid``, ``cnnlab.host``) and a heartbeat (``cnnlab.heartbeat``,
unix seconds, renewed each epoch); ``owner_died`` tells the next command that the owner is
gone, and ``tracking.mark_dead_runs`` marks such runs FAILED.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

PID_TAG, HOST_TAG, HEARTBEAT_TAG = "cnnlab.pid", "cnnlab.host", "cnnlab.heartbeat"
FAILURE_TAG = "cnnlab.failure"  # why a run ended FAILED or KILLED
# A run on another machine is given up for dead when its heartbeat is older than this: the
# longest epoch we run (AlexNet on CIFAR-10, 2 CPU cores) takes under an hour.
STALE_HEARTBEAT_SECONDS = 6 * 3600


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C, with the exit code of SIGTERM."""

    signal_number = signal.SIGTERM


def exit_signal(interruption: KeyboardInterrupt) -> int:
    """The signal behind an interruption: SIGTERM for ``Terminated``, else SIGINT (Ctrl-C)."""
    return int(getattr(interruption, "signal_number", signal.SIGINT))


def exit_code(interruption: KeyboardInterrupt) -> int:
    """The shell's code for a process ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + exit_signal(interruption)


def describe_exit(err: BaseException) -> str:
    """The reason a run ended early, for its ``cnnlab.failure`` tag."""
    if isinstance(err, KeyboardInterrupt):
        return f"interrupted by {signal.Signals(exit_signal(err)).name}"
    return str(err) or type(err).__name__


# Python runs a signal handler between any two bytecodes, and an exception raised while the
# interpreter runs a weakref callback or a __del__ is printed ("Exception ignored in ...") and
# dropped: the process would train on as if nothing had arrived. So the handlers remember the
# signal (_arrived), the unraisable hook notes a dropped interruption (_dropped), and the
# training loop calls raise_if_interrupted() every step, which raises a dropped one again.
_arrived: int | None = None
_dropped: int | None = None


def raise_terminated(signum, frame) -> None:
    # One SIGTERM is enough: a second (a supervisor repeating itself) must not cut short the
    # handlers that are ending the runs. SIGKILL still stops the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note_terminated(signum, frame)
    raise interruption(signal.SIGTERM)


def note_terminated(signum, frame) -> None:
    """SIGTERM remembered, not raised: ``raise_if_told_to_stop`` raises it before the next job."""
    global _arrived
    _arrived = signal.SIGTERM


def raise_interrupt(signum, frame) -> None:
    """Ctrl-C, as Python's own handler, remembered for raise_if_interrupted."""
    global _arrived
    _arrived = signal.SIGINT
    raise interruption(signal.SIGINT)


def interruption(signum: int) -> KeyboardInterrupt:
    return Terminated("terminated by SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt()


def interruption_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``err`` is, or was raised while handling, if any."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def hide_dropped_interruptions(hook):
    """A ``sys.unraisablehook`` that passes everything to ``hook`` but the interruption of a
    signal that arrived: it is noted for raise_if_interrupted, which raises it again, so its
    traceback would only alarm (Python prints one for every exception it drops)."""
    def unraisable(info) -> None:
        global _dropped
        if isinstance(info.exc_value, KeyboardInterrupt) and _arrived is not None:
            _dropped = _arrived
        else:
            hook(info)
    return unraisable


def raise_if_interrupted() -> None:
    """Raise again, once, an interruption Python dropped on its way."""
    global _dropped
    signum, _dropped = _dropped, None
    if signum is not None:
        raise interruption(signum)


def told_to_stop() -> bool:
    return _arrived is not None


def raise_if_told_to_stop() -> None:
    """In a worker process: once its SIGTERM came, it starts nothing more."""
    if told_to_stop():
        raise interruption(_arrived)


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block the first SIGTERM raises ``Terminated`` (later ones are ignored) and
    SIGINT ``KeyboardInterrupt``, each remembered for ``raise_if_interrupted``; the previous
    handlers come back after. A signal the parent process set to be ignored stays ignored, and
    outside the main thread (where Python cannot set handlers) nothing changes."""
    global _arrived, _dropped
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = {signal.SIGTERM: raise_terminated, signal.SIGINT: raise_interrupt}
    previous = {signum: signal.getsignal(signum) for signum in ours}
    previous_hook = sys.unraisablehook
    for signum, handler in ours.items():
        if previous[signum] != signal.SIG_IGN:
            signal.signal(signum, handler)
    sys.unraisablehook = hide_dropped_interruptions(previous_hook)
    try:
        yield
        raise_if_interrupted()  # dropped outside a training step: the command still ends interrupted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook
        _arrived = _dropped = None  # the block was the command: what arrived has ended it


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the run's owner, with a fresh heartbeat."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), **heartbeat_tag()}


def heartbeat_tag() -> dict[str, str]:
    return {HEARTBEAT_TAG: str(int(time.time()))}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def owner_died(tags: dict[str, str], now: float | None = None) -> bool:
    """Whether the process that owns a RUNNING run is gone: on this host its pid no longer
    exists; on another its heartbeat is older than ``STALE_HEARTBEAT_SECONDS``. A run without
    owner tags (created by something else, or before they were recorded) is never judged."""
    pid, host = tags.get(PID_TAG, ""), tags.get(HOST_TAG, "")
    if not pid.isdigit() or not host:
        return False
    if host == socket.gethostname():
        return not pid_alive(int(pid))
    beat = tags.get(HEARTBEAT_TAG, "")
    return beat.isdigit() and (now or time.time()) - int(beat) > STALE_HEARTBEAT_SECONDS


def interrupted_line(command: str, params: str, overrides: list[str], err: KeyboardInterrupt,
                     launcher: list[str]) -> str:
    """The one line an interrupted command prints: where it stopped and the command that goes
    on from there (this command's own settings, plus the interruption's ``resume_settings``),
    started as this one was (``launcher``: torchrun's words under torchrun, else none)."""
    settings = getattr(err, "resume_settings", None)
    if settings is None:
        return f"cnnlab {command}: interrupted; run the same command again to go on"
    if command not in ("train", "pipeline"):  # seeds, retrain-best: runs configured in code
        return f"cnnlab {command}: {err}"
    kept = [o for o in overrides if o.split("=", 1)[0] not in settings]
    params_words = [] if params == "params.yaml" else ["--params", params]
    settings_words = [word for o in [*kept, *(f"{k}={v}" for k, v in settings.items())] for word in ("-S", o)]
    line = shlex.join([*launcher, "train", *params_words, *settings_words])
    return f"{err}; {'resume' if settings else 'start again'} with `{line}`"
