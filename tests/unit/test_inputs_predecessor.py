"""Which object under a pod's or its inputs' name kloop leaves to the garbage collector."""

from __future__ import annotations

from typing import Any

import pytest

from kloop.adapters.apply import INPUT_WAIT_SECONDS, left_by_predecessor, waited_too_long
from kloop.api import GROUP, VERSION

RUN = f"{GROUP}/{VERSION}"
OURS = {"apiVersion": RUN, "kind": "LoopRun", "name": "again", "uid": "new"}


def owned_by(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    owner = {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}
    return existing(ownerReferences=[owner])


def existing(**meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "again-s0-local-i1-maker-in", **meta}}


@pytest.mark.parametrize(
    ("found", "predecessor"),
    [
        (owned_by(RUN, "LoopRun", "again", "old"), True),
        (owned_by(f"{GROUP}/v1", "LoopRun", "again", "old"), True),
        (existing(deletionTimestamp="2026-11-26T20:01:04Z"), True),
        (owned_by(RUN, "LoopRun", "again", "new"), False),
        (owned_by(RUN, "LoopRun", "other", "x"), False),
        (owned_by("forged.example/v1", "LoopRun", "again", "old"), False),
        (owned_by("batch/v1", "Job", "again", "old"), False),
        (existing(), False),
    ],
    ids=[
        "a deleted run of our name",
        "the same under another version",
        "being deleted",
        "an earlier attempt of ours",
        "another run's (planted)",
        "a LoopRun of another group (planted)",
        "another kind's (planted)",
        "no owner (planted)",
    ],
)
def test_only_a_deleted_runs_inputs_are_left_to_the_garbage_collector(
    found: dict[str, Any], predecessor: bool
) -> None:
    assert left_by_predecessor(found, OURS) is predecessor


def test_a_pod_waits_for_a_predecessors_inputs_only_so_long() -> None:
    waits: dict[tuple[str, str], float] = {}
    key = ("new", "again-s0-local-i1-maker")
    assert not waited_too_long(waits, key, 1000.0), "the first wait starts the clock"
    assert not waited_too_long(waits, key, 1000.0 + INPUT_WAIT_SECONDS - 1)
    assert waited_too_long(waits, key, 1000.0 + INPUT_WAIT_SECONDS)
    assert not waited_too_long(waits, ("new", "another-pod"), 1000.0 + INPUT_WAIT_SECONDS)
