"""Which existing inputs ConfigMap kloop may overwrite and which it leaves to the collector."""

from __future__ import annotations

from typing import Any

import pytest

from kloop.adapters.apply import left_by_predecessor

OURS = {
    "metadata": {
        "name": "again-s0-local-i1-maker-in",
        "ownerReferences": [{"kind": "LoopRun", "name": "again", "uid": "new-uid"}],
    }
}


def existing(**meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "again-s0-local-i1-maker-in", **meta}}


@pytest.mark.parametrize(
    ("found", "predecessor"),
    [
        (existing(ownerReferences=[{"kind": "LoopRun", "name": "again", "uid": "old-uid"}]), True),
        (existing(deletionTimestamp="2026-11-26T20:01:04Z"), True),
        (existing(ownerReferences=[{"kind": "LoopRun", "name": "again", "uid": "new-uid"}]), False),
        (existing(ownerReferences=[{"kind": "LoopRun", "name": "other", "uid": "x"}]), False),
        (existing(ownerReferences=[{"kind": "Job", "name": "again", "uid": "old-uid"}]), False),
        (existing(), False),
    ],
    ids=[
        "a deleted run of our name",
        "being deleted",
        "an earlier attempt of ours",
        "another run's (planted)",
        "another kind's (planted)",
        "no owner (planted)",
    ],
)
def test_only_a_deleted_runs_inputs_are_left_to_the_garbage_collector(
    found: dict[str, Any], predecessor: bool
) -> None:
    assert left_by_predecessor(found, OURS) is predecessor
