"""When measurements ran on one kind of machine: wall times add up only there.

``runtime.machine()`` records what a measurement ran on. Sessions here land on different CPUs,
and one name ("AMD EPYC") covers generations with and without native bf16, several times apart
in speed; so a search timed on one and a retraining timed on another sum to no machine's time.
"""

from __future__ import annotations

from typing import Any

# What makes two records one kind of machine: the process's own thread count is left out
# (search workers and seeds choose theirs), and so is native_bf16 (the flags say it). Two CPUs
# of one name and the same bf16 flags count as one kind: the record holds no more.
KIND_KEYS = ("cpu", "cores_available", "bf16_flags", "cuda", "torch")


def machine_kind(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record.get(key) for key in KIND_KEYS}


def one_kind(records: list[dict[str, Any]]) -> bool:
    """Whether the records (at least one) are all of one kind of machine."""
    kinds = [machine_kind(record) for record in records]
    return bool(kinds) and all(kind == kinds[0] for kind in kinds)


def timed_on_one_kind(*parts: tuple[float, list[dict[str, Any]]]) -> float | None:
    """The parts' wall seconds summed, each given with the machines it ran on; None unless every
    part recorded its machines and all of them are one kind."""
    machines = [record for _, records in parts for record in records]
    if any(not records for _, records in parts) or not one_kind(machines):
        return None
    return sum(seconds for seconds, _ in parts)


def describe_kind(record: dict[str, Any]) -> str:
    """A record in the words that tell kinds apart: CPUs of one name differ by their bf16 flags."""
    flags = record.get("bf16_flags")
    native = "" if flags is None else f"native bf16 ({', '.join(flags)})" if flags else "no native bf16"
    return ", ".join(part for part in (record["cpu"], native, record.get("cuda") or "") if part)


def describe_kinds(records: list[dict[str, Any]]) -> str:
    """Where a measurement of several parts ran (a study's trials), in words, each once (workers
    differ in their thread counts, not in kind); none recorded: said so."""
    return " and ".join(dict.fromkeys(map(describe_kind, records))) or "a machine it did not record"
