"""The one retry loop behind the store recoveries (cnnlab.retry)."""
import pytest

import cnnlab.retry
from cnnlab.retry import retried


@pytest.fixture
def pauses(monkeypatch):
    slept = []
    monkeypatch.setattr(cnnlab.retry.time, "sleep", slept.append)
    return slept


def failing(times: int, error: Exception):
    """An action that raises ``error`` on its first ``times`` calls, then returns how many calls it took."""
    calls = []

    def action():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return len(calls)
    return action, calls


def test_a_passing_try_after_failures_gives_its_result_and_each_failure_its_pause(pauses):
    seen = []
    action, _ = failing(2, OSError("locked"))
    assert retried(action, attempts=3, pause_s=lambda attempt: 0.5 * attempt, on_retry=seen.append) == 3
    assert pauses == [0.5, 1.0] and [str(err) for err in seen] == ["locked", "locked"]


def test_the_last_failure_propagates_after_exactly_the_attempts(pauses):
    action, calls = failing(10, OSError("still locked"))
    with pytest.raises(OSError, match="still locked"):
        retried(action, attempts=4, pause_s=lambda attempt: 1)
    assert len(calls) == 4 and len(pauses) == 3  # no pause after the last try


def test_an_error_outside_retry_on_and_an_interruption_are_not_retried(pauses):
    action, calls = failing(1, ValueError("a bug, not a busy store"))
    with pytest.raises(ValueError):
        retried(action, attempts=5, pause_s=lambda attempt: 1, retry_on=(OSError,))
    interrupted, interrupted_calls = failing(1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        retried(interrupted, attempts=5, pause_s=lambda attempt: 1)
    assert len(calls) == 1 and len(interrupted_calls) == 1 and pauses == []


def test_no_attempt_is_an_error_not_a_silent_none(pauses):
    with pytest.raises(ValueError, match="at least 1"):
        retried(lambda: 1, attempts=0, pause_s=lambda attempt: 1)
