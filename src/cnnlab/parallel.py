"""Independent jobs (seeds, search workers) in worker processes that split the CPU cores.

Why processes and not more threads: a small CNN's training step can scale poorly across
intra-op threads on a CPU of few cores; whether it does depends on the net and the CPU
(``make bench-ddp`` measures 2 processes x 1 thread against 1 process x 2 threads for E1's
SimpleCNN into bench/ddp_throughput.json). Each worker
loads its own copy of the data and writes its own MLflow run, so nothing is shared but the
stores, which already serve several processes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

from .console import configure_logging
from .lifecycle import (hide_dropped_interruptions, note_terminated, raise_if_told_to_stop, raise_terminated,
                        told_to_stop)
from .runtime import available_cores


def threads_per_worker(workers: int, threads: int = 0) -> int:
    """Intra-op threads for each of ``workers`` processes sharing ``threads`` (0 = every core)."""
    return max(1, (threads or available_cores()) // workers)


def _start_worker() -> None:
    configure_logging(process_name=True)  # the parent's --verbose arrives in $CNNLAB_VERBOSE
    # Ctrl-C in a terminal reaches the whole process group: only the coordinator takes it, and
    # stops each worker with one SIGTERM (run_jobs), which ends the worker's runs KILLED.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate_worker)
    sys.unraisablehook = hide_dropped_interruptions(sys.unraisablehook)


_in_job = False  # in a worker process: whether it is running a job now


def _terminate_worker(signum, frame) -> None:
    # Only a running job is interrupted (and ignores later SIGTERMs while it ends its runs). An
    # idle worker waits inside the pool's call queue, holding its read lock: raised there, the
    # signal killed it with a traceback, and could leave the lock taken, so that the pool's
    # shutdown waited for ever. It notes the first one instead; the shutdown's sentinel ends it,
    # and it starts no other job (_run_job). A second one while idle comes from a pool that lost
    # a worker and now stops the rest (terminate, then join): nothing is left to end, so it exits.
    if _in_job:
        raise_terminated(signum, frame)
    if told_to_stop():
        os._exit(128 + signum)
    note_terminated(signum, frame)


def _run_job(target: Callable[..., Any], *args: Any) -> Any:
    global _in_job
    _in_job = True
    try:
        # The pool hands out one job more than it has workers, and shutdown cannot cancel that one:
        # a worker already told to stop must not start it (load data, open an MLflow run).
        raise_if_told_to_stop()
        return target(*args)
    finally:
        _in_job = False
        signal.signal(signal.SIGTERM, _terminate_worker)  # an interrupted job ignored the later ones


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """The coordinator was interrupted: no job starts any more, and each worker gets one SIGTERM
    so that it ends its runs KILLED (or finishes them) before the coordinator goes on."""
    for process in list((pool._processes or {}).values()):  # noqa: SLF001 - the pool names no other way
        if process.is_alive():
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    pool.shutdown(wait=True, cancel_futures=True)


def run_jobs(target: Callable[..., Any], jobs: Sequence[tuple], workers: int,
             describe: Callable[[tuple], str] = repr) -> list[Any]:
    """``[target(*job) for job in jobs]``, ``workers`` at a time in fresh (spawned) processes.

    Every job runs to its end even when another fails, so finished work survives; failures
    are reported together afterwards, each under ``describe(job)``.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [target(*job) for job in jobs]
    results: list[Any] = [None] * len(jobs)
    failures: list[str] = []
    # spawn, not fork: a forked child would inherit torch's thread pools and open database handles.
    context = multiprocessing.get_context("spawn")
    # One job per process: a worker leaves once its job ends, so none is left waiting on the pool's
    # queue after an interrupted job, deaf to the SIGTERM with which a pool that lost a worker
    # stops the rest (its join would wait for ever). Each job loads its own data anyway.
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                             initializer=_start_worker, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_run_job, target, *job): index for index, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                index = futures[future]
                try:
                    results[index] = future.result()
                except Exception as err:  # noqa: BLE001 - reported below with the job it belongs to
                    failures.append(f"{describe(jobs[index])}: {type(err).__name__}: {err}")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (cnnlab.lifecycle) of the coordinator
            _stop_workers(pool)
            raise
    if failures:
        done = len(jobs) - len(failures)
        raise RuntimeError(f"{len(failures)} of {len(jobs)} jobs failed ({done} finished and kept):\n  "
                           + "\n  ".join(failures))
    return results
