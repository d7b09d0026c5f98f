"""The suite's own plumbing: how xdist workers share the cores."""

from .conftest import worker_cores


def test_workers_split_the_cores_between_them_without_overlap():
    cores = [0, 1, 2, 3, 4]
    shares = [worker_cores(f"gw{i}", 2, cores) for i in range(2)]
    assert shares == [[0, 2, 4], [1, 3]]
    assert worker_cores("gw0", 2, [0, 1]) == [0] and worker_cores("gw1", 2, [0, 1]) == [1]


def test_fewer_cores_than_workers_or_one_worker_keeps_them_all():
    assert worker_cores("gw2", 4, [0, 1]) == [0, 1]
    assert worker_cores("gw0", 1, [0, 1]) == [0, 1]
