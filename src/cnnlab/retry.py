"""Trying a store write again: the one loop behind every "a parallel process or an interruption
held the store for a moment" recovery (Optuna's schema and trial ends, MLflow's run ends and
dataset inserts). The caller decides what a last failure means: this re-raises it."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def retried(action: Callable[[], T], *, attempts: int, pause_s: Callable[[int], float],
            retry_on: tuple[type[Exception], ...] = (Exception,),
            on_retry: Callable[[Exception], None] = lambda err: None) -> T:
    """``action()``'s result, tried up to ``attempts`` times while it raises one of ``retry_on``;
    after failed try n (from 1) ``on_retry(error)`` is called and ``pause_s(n)`` seconds pass. The
    last try's error propagates; an interruption (KeyboardInterrupt) is never retried."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except retry_on as err:
            if attempt == attempts:
                raise
            on_retry(err)
            time.sleep(pause_s(attempt))
    raise ValueError(f"attempts must be at least 1, got {attempts}")
