"""The triggers keep of each Loop only what they read of it, not a second whole copy."""

from __future__ import annotations

import pytest

from kloop.adapters import triggers as io
from kloop.adapters.receiver import loop_ref
from kloop.triggers import _merged, _statuses, trigger_view

pytestmark = pytest.mark.unit

LOOP = {
    "apiVersion": "kloop.dev/v1alpha1",
    "kind": "Loop",
    "metadata": {
        "name": "l",
        "namespace": "ns",
        "uid": "u",
        "resourceVersion": "7",
        "managedFields": [{"manager": "kubectl"}],
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}" * 100},
    },
    "spec": {
        "triggers": [{"name": "t", "git": {"url": "https://example.invalid/r.git"}}],
        "maker": {"image": "i", "env": [{"name": "E", "value": "x" * 500}]},
    },
    "status": {"triggers": [{"name": "t", "lastPolled": "T"}], "history": [{"run": "r"}] * 50},
}


def test_a_kept_loop_answers_every_trigger_read_like_the_whole_loop() -> None:
    view = trigger_view(LOOP)
    assert io.trigger_names(view) == io.trigger_names(LOOP) == ["t"]
    assert (
        io.status_entry(view, "t") == io.status_entry(LOOP, "t") == {"name": "t", "lastPolled": "T"}
    )
    assert loop_ref(view) == loop_ref(LOOP)
    assert _statuses(view) == _statuses(LOOP)
    assert _merged(view, {}) == _merged(LOOP, {})
    assert "maker" not in view["spec"] and "history" not in view["status"]
    assert "managedFields" not in view["metadata"] and "annotations" not in view["metadata"]


def test_a_loop_without_triggers_keeps_only_its_identity() -> None:
    bare = {**LOOP, "spec": {"maker": {}}, "status": {}}
    assert set(trigger_view(bare)) == {"apiVersion", "kind", "metadata"}
    assert io.trigger_names(trigger_view(bare)) == []
