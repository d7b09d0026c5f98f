"""cnnlab.machines: which measurements ran on one kind of machine, and how that reads in the docs."""

from cnnlab.machines import describe_kinds, one_kind

XEON_WORKER = {"cpu": "Intel Xeon", "cores_available": 2, "torch_threads": 1, "native_bf16": True,
               "bf16_flags": ["amx_bf16", "avx512_bf16"], "cuda": "", "torch": "2.14.1"}
ZEN_1 = {**XEON_WORKER, "cpu": "AMD EPYC", "native_bf16": False, "bf16_flags": []}


def test_a_study_s_machines_are_named_once_per_kind_however_many_threads_its_workers_took():
    other_worker = {**XEON_WORKER, "torch_threads": 2}
    assert one_kind([XEON_WORKER, other_worker]) and not one_kind([XEON_WORKER, ZEN_1])
    xeon = "Intel Xeon, native bf16 (amx_bf16, avx512_bf16)"
    assert describe_kinds([XEON_WORKER, other_worker]) == xeon
    assert describe_kinds([XEON_WORKER, ZEN_1, other_worker]) == f"{xeon} and AMD EPYC, no native bf16"
    assert describe_kinds([]) == "a machine it did not record"
