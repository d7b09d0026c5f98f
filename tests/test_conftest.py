"""The suite's own plumbing: how xdist workers share the cores."""

import signal

from .conftest import pytest_report_header, worker_cores


def test_workers_split_the_cores_between_them_without_overlap():
    cores = [0, 1, 2, 3, 4]
    shares = [worker_cores(f"gw{i}", 2, cores) for i in range(2)]
    assert shares == [[0, 2, 4], [1, 3]]
    assert worker_cores("gw0", 2, [0, 1]) == [0] and worker_cores("gw1", 2, [0, 1]) == [1]


def test_fewer_cores_than_workers_or_one_worker_keeps_them_all():
    assert worker_cores("gw2", 4, [0, 1]) == [0, 1]
    assert worker_cores("gw0", 1, [0, 1]) == [0, 1]


def test_the_report_header_says_when_the_runner_ignores_sigint(terminal_signals):
    # terminal_signals: SIGINT handled as in a terminal now, and put back after the test
    assert pytest_report_header(None) is None
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    assert "SIGINT is ignored by this test runner" in pytest_report_header(None)
