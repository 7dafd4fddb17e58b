"""The watch store answers a pass like the API would: newest copy wins, no ghosts, no gaps."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from kloop.adapters import store as store_module
from kloop.adapters import targets
from kloop.adapters.pods import observe_pod
from kloop.adapters.store import Store, newer
from kloop.loops import run_changed_for_loop

pytestmark = pytest.mark.unit


def obj(name: str, rv: str, namespace: str = "ns", **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": rv}, **extra}


def pod(name: str, rv: str, run: str = "r1") -> dict[str, Any]:
    body = obj(name, rv)
    body["metadata"]["labels"] = {"kloop.dev/run": run}
    return body


def listed(rv: str, *pods: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "items": list(pods)}


def test_a_late_watch_event_never_rolls_back_what_a_write_returned() -> None:
    store = Store()
    store.put_run(obj("r1", "20", status={"phase": "Running"}))
    store.put_run(obj("r1", "12", status={"phase": "Pending"}))
    assert store.runs[("ns", "r1")]["status"] == {"phase": "Running"}


def test_resource_versions_compare_as_numbers_not_text() -> None:
    assert newer(obj("a", "100"), obj("a", "99"))
    assert not newer(obj("a", "99"), obj("a", "100"))


def test_a_version_that_is_not_a_number_counts_as_newer() -> None:
    assert newer(obj("a", "x1"), obj("a", "100"))


def test_a_pod_deleted_between_the_watch_listing_and_the_runs_list_is_not_resurrected() -> None:
    store = Store()
    store.seed_pods("ns", "r1", listed("50", pod("kept", "40")))
    store.put_pod(pod("deleted-before-the-list", "30"))  # kopf's initial listing, delivered late
    assert [p["metadata"]["name"] for p in store.pods_of("ns", "r1")] == ["kept"]


def test_a_pod_created_after_the_runs_list_is_stored() -> None:
    store = Store()
    store.seed_pods("ns", "r1", listed("50"))
    store.put_pod(pod("new", "51"))
    assert [p["metadata"]["name"] for p in store.pods_of("ns", "r1")] == ["new"]


def test_seeding_replaces_what_was_known_of_the_runs_pods() -> None:
    store = Store()
    store.seed_pods("ns", "r1", listed("5"))
    store.put_pod(pod("ghost", "10"))
    store.seed_pods("ns", "r1", listed("60", pod("real", "55")))
    assert [p["metadata"]["name"] for p in store.pods_of("ns", "r1")] == ["real"]


def test_a_deleted_pod_leaves_the_runs_index() -> None:
    store = Store()
    store.seed_pods("ns", "r1", listed("5"))
    store.put_pod(pod("p", "6"))
    store.delete_pod(pod("p", "7"))
    assert store.pods_of("ns", "r1") == []


def test_pods_are_indexed_by_their_run_label_in_their_namespace() -> None:
    store = Store()
    store.seed_pods("ns", "r1", listed("0"))
    store.seed_pods("ns", "r2", listed("0"))
    store.put_pod(pod("a", "1", run="r1"))
    store.put_pod(pod("b", "2", run="r2"))
    assert [p["metadata"]["name"] for p in store.pods_of("ns", "r2")] == ["b"]
    assert store.pods_of("other", "r2") == []


def test_a_run_lists_its_pods_for_real_first_and_again_after_the_reseed_interval() -> None:
    store = Store()
    assert store.needs_seed("ns", "r1")
    store.seed_pods("ns", "r1", listed("5"))
    assert not store.needs_seed("ns", "r1")
    later = time.monotonic() + store_module.RESEED_SECONDS + 1
    assert store.needs_seed("ns", "r1", now=later)
    store.unseed("ns", "r1")
    assert store.needs_seed("ns", "r1")


def test_runs_of_a_loop_are_found_by_their_loop_ref() -> None:
    store = Store()
    store.put_run(obj("a", "1", spec={"loopRef": {"name": "greeting"}}))
    store.put_run(obj("b", "2", spec={"loopRef": {"name": "other"}}))
    store.put_run(obj("c", "3", namespace="elsewhere", spec={"loopRef": {"name": "greeting"}}))
    assert [r["metadata"]["name"] for r in store.runs_of("ns", "greeting")] == ["a"]


def run(**status: Any) -> dict[str, Any]:
    body = obj("r1", "1", spec={"loopRef": {"name": "l"}}, status=status)
    body["metadata"]["creationTimestamp"] = "2026-11-26T00:00:00Z"
    return body


def test_a_verdict_recorded_does_not_wake_the_loop_but_a_new_phase_does() -> None:
    before = run(phase="Running", iterations=[{"number": 1}])
    verdict = run(phase="Running", iterations=[{"number": 1, "checkers": [{"name": "c"}]}])
    assert not run_changed_for_loop(before, verdict)
    assert run_changed_for_loop(before, run(phase="Succeeded", iterations=[{"number": 1}]))


def test_a_new_or_deleted_run_wakes_the_loop() -> None:
    assert run_changed_for_loop(None, run(phase="Running"))
    assert run_changed_for_loop(run(phase="Running"), None)


def test_the_loop_hears_of_a_runs_change_once_whoever_stored_it_first() -> None:
    heard: list[tuple[Any, Any]] = []
    store = Store(on_run_change=lambda before, after: heard.append((before, after)))
    written = obj("r1", "7", status={"phase": "Succeeded"})
    assert store.put_run(written)  # the answer to kloop's own status write
    assert not store.put_run(obj("r1", "7", status={"phase": "Succeeded"}))  # its watch event
    store.forget_run("ns", "r1")
    assert heard == [(None, written), (written, None)]


def test_pods_of_runs_no_task_drives_are_not_kept() -> None:
    store = Store()
    store.put_pod(pod("other-shards-or-finished", "3"))
    assert store.pods == {}
    store.seed_pods("ns", "r1", listed("5", pod("p", "4")))
    store.forget_pods("ns", "r1")
    store.put_pod(pod("p", "9"))
    assert store.pods_of("ns", "r1") == []


def test_stored_pods_carry_no_managed_fields() -> None:
    store = Store()
    store.seed_pods("ns", "r1", listed("5"))
    body = pod("p", "6")
    body["metadata"]["managedFields"] = [{"manager": "kubelet"}]
    store.put_pod(body)
    assert "managedFields" not in store.pods_of("ns", "r1")[0]["metadata"]
    assert body["metadata"]["managedFields"], "the event's own body is left as it was"


def _full_pod(phase: str, **state: Any) -> dict[str, Any]:
    """A pod as the watch sends it: spec, status and metadata kloop never reads included."""
    body = pod("p", "6")
    body["metadata"].update(
        labels={"kloop.dev/run": "r1", "kloop.dev/cluster": "east"},
        annotations={"kloop.dev/target-secret-uid": "s1", "kloop.dev/token-expires-at": "T"},
        ownerReferences=[{"kind": "LoopRun", "name": "r1", "uid": "u1"}],
        uid="pod-uid",
        creationTimestamp="2026-01-01T00:00:00Z",
        deletionTimestamp="2026-01-01T00:05:00Z",
        managedFields=[{"manager": "kubelet"}],
    )
    body["spec"] = {
        "containers": [
            {"name": "agent", "image": "i", "env": [{"name": "E", "value": "x" * 500}]},
            {"name": "sidecar", "image": "j"},
        ],
        "volumes": [{"name": "v", "configMap": {"name": "c"}}],
    }
    body["status"] = {
        "phase": phase,
        "reason": "Evicted",
        "message": "m",
        "conditions": [{"type": "Ready", "status": "False"}],
        "podIP": "10.0.0.1",
        "initContainerStatuses": [
            {"name": "kloop-clone", "image": "k", "state": {"terminated": {"exitCode": 0}}}
        ],
        "containerStatuses": [
            {"name": "sidecar", "state": {"running": {}}, "imageID": "x"},
            {"name": "agent", "state": state, "restartCount": 0, "imageID": "y"},
        ],
    }
    return body


@pytest.mark.parametrize(
    ("phase", "state"),
    [
        ("Failed", {"terminated": {"exitCode": 3, "reason": "Error", "message": "boom"}}),
        ("Pending", {"waiting": {"reason": "ImagePullBackOff"}}),
    ],
)
def test_a_stored_pod_keeps_all_kloop_reads_of_it_and_little_else(
    phase: str, state: dict[str, Any]
) -> None:
    store = Store()
    store.seed_pods("ns", "r1", listed("5"))
    body = _full_pod(phase, **state)
    store.put_pod(body)
    kept = store.pods_of("ns", "r1")[0]
    assert observe_pod(kept) == observe_pod(body)
    assert targets.is_remote(kept) and targets.token_expiry([kept]) == {"east": "T"}
    assert targets.ended_remote_pods([kept]) == targets.ended_remote_pods([body])
    assert kept["metadata"]["ownerReferences"] == body["metadata"]["ownerReferences"]
    assert "volumes" not in kept["spec"] and "env" not in kept["spec"]["containers"][0]
    assert "conditions" not in kept["status"] and "managedFields" not in kept["metadata"]
    assert body["spec"]["volumes"], "the event's own body is left as it was"


def test_a_run_marked_stale_is_read_for_real_but_stays_listed_for_its_loop() -> None:
    store = Store()
    store.put_run(obj("r1", "4", spec={"loopRef": {"name": "l"}}))
    store.mark_stale("ns", "r1")
    assert store.run("ns", "r1") is None
    assert [r["metadata"]["name"] for r in store.runs_of("ns", "l")] == ["r1"]
    store.put_run(obj("r1", "5", spec={"loopRef": {"name": "l"}}))
    assert store.run("ns", "r1") is not None


def test_a_late_deleted_of_an_earlier_pod_keeps_the_new_pod_of_that_name() -> None:
    store = Store()
    store.seed_pods("ns", "r1", listed("5"))
    new = pod("p", "20")
    new["metadata"]["uid"] = "new"
    store.put_pod(new)
    old = pod("p", "12")
    old["metadata"]["uid"] = "old"
    store.delete_pod(old)
    assert [p["metadata"]["uid"] for p in store.pods_of("ns", "r1")] == ["new"]


def test_a_pod_event_during_the_runs_first_list_is_kept_over_the_lists_older_copy() -> None:
    store = Store()
    store.begin_seed("ns", "r1")
    store.put_pod(pod("p", "105", run="r1") | {"status": {"phase": "Succeeded"}})
    store.seed_pods("ns", "r1", listed("100", pod("p", "100") | {"status": {"phase": "Running"}}))
    assert store.pods_of("ns", "r1")[0]["status"] == {"phase": "Succeeded"}
    assert not store.needs_seed("ns", "r1")


def test_a_relist_keeps_a_pod_created_after_it_and_drops_one_deleted_before_it() -> None:
    store = Store()
    store.seed_pods("ns", "r1", listed("10", pod("gone", "8")))
    store.unseed("ns", "r1")
    store.put_pod(pod("created-after", "31"))
    store.seed_pods("ns", "r1", listed("30"))
    assert [p["metadata"]["name"] for p in store.pods_of("ns", "r1")] == ["created-after"]


def test_a_late_deleted_of_an_earlier_run_keeps_the_new_run_of_that_name() -> None:
    store = Store()
    new = obj("r1", "9")
    new["metadata"]["uid"] = "new"
    store.put_run(new)
    store.forget_run("ns", "r1", uid="old")
    assert store.run("ns", "r1") == new


def test_a_forgotten_run_leaves_its_loops_runs() -> None:
    store = Store()
    store.put_run(obj("a", "1", spec={"loopRef": {"name": "greeting"}}))
    store.put_run(obj("b", "2", spec={"loopRef": {"name": "greeting"}}))
    store.forget_run("ns", "a")
    assert [r["metadata"]["name"] for r in store.runs_of("ns", "greeting")] == ["b"]


def test_a_stored_run_keeps_only_the_managed_fields_that_name_who_set_annotations() -> None:
    store = Store()
    run = obj("r1", "3")
    approval = {"manager": "kubectl-annotate", "fieldsV1": {"f:metadata": {"f:annotations": {}}}}
    status = {"manager": "kloop-operator", "subresource": "status", "fieldsV1": {"f:status": {}}}
    run["metadata"]["managedFields"] = [approval, status]
    store.put_run(run)
    assert store.runs[("ns", "r1")]["metadata"]["managedFields"] == [approval]
    assert run["metadata"]["managedFields"] == [approval, status], "the event's body is untouched"


def test_stored_bodies_are_equal_copies_sharing_their_keys_and_short_strings() -> None:
    store = Store()
    bodies = [
        json.loads(json.dumps(obj(name, "3", status={"phase": "Running", "message": "m" * 200})))
        for name in ("r1", "r2")
    ]
    for body in bodies:
        store.put_run(body)
    one, two = store.runs[("ns", "r1")], store.runs[("ns", "r2")]
    assert one == bodies[0] and two == bodies[1]
    assert next(k for k in one["status"] if k == "phase") is next(
        k for k in two["status"] if k == "phase"
    )
    assert one["status"]["phase"] is two["status"]["phase"]
    assert bodies[0]["status"]["phase"] is not bodies[1]["status"]["phase"], "parsed apart"


def test_a_sleeping_task_keeps_the_stored_copy_of_its_run_only_when_it_is_that_version() -> None:
    store = Store()
    store.put_run(obj("r1", "5"))
    answer = obj("r1", "5")
    assert store.settled(answer) is store.runs[("ns", "r1")]
    newer_answer = obj("r1", "6")
    assert store.settled(newer_answer) is newer_answer
    opaque = obj("r1", "abc")
    store.put_run(opaque)
    assert store.settled(obj("r1", "abc")) is not store.runs[("ns", "r1")]


def test_shared_values_stop_at_the_cap_and_are_still_copied_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_module, "_shared", {})
    monkeypatch.setattr(store_module, "SHARED_CAP", 10)
    values = [f"resourceVersion-{i}" for i in range(50)]
    copied = store_module.compact({"items": values})
    assert copied == {"items": values}
    assert len(store_module._shared) == 10
