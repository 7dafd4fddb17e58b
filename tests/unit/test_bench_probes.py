"""The pure parts of ``make bench``: percentiles, step gaps, request kinds, greeting emulation."""

from __future__ import annotations

from typing import Any

import pytest
from e2e.bench.greeting import finished_status, outcome, running_status
from e2e.bench.procstat import TICKS, cpu_seconds_of
from e2e.bench.promtext import apiserver_requests, kloop_requests
from e2e.bench.stats import Stats, percentile
from e2e.bench.timeline import PodTimes, record, step_gaps

from kloop.adapters.kube import request_kind
from kloop.adapters.pods import observe_pod
from kloop.api.results import Verdict, parse_checker_result, parse_maker_result

pytestmark = pytest.mark.unit


def test_percentile_is_nearest_rank_and_always_a_sample() -> None:
    samples = [float(i) for i in range(1, 101)]  # 1..100
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 99) == 3.0  # few samples: p99 is the largest
    assert percentile([5.0], 1) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_stats_give_min_median_p99_max() -> None:
    s = Stats.of([4.0, 1.0, 3.0, 2.0])
    assert (s.n, s.low, s.median, s.p99, s.high) == (4, 1.0, 2.5, 4.0, 4.0)


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GET", "https://h:6443/api/v1/namespaces/ns/pods?labelSelector=a", ("list", "pods")),
        (
            "GET",
            "https://h/api/v1/namespaces/ns/pods?watch=true&resourceVersion=1",
            ("watch", "pods"),
        ),
        ("GET", "https://h/api/v1/namespaces/ns/pods/p1", ("get", "pods")),
        ("POST", "https://h/api/v1/namespaces/ns/pods/p1/binding", ("create", "pods/binding")),
        ("PATCH", "https://h/api/v1/namespaces/ns/pods/p1/status", ("patch", "pods/status")),
        ("GET", "https://h/apis/kloop.dev/v1alpha1/namespaces/ns/loops/l", ("get", "loops")),
        (
            "PUT",
            "https://h/apis/kloop.dev/v1alpha1/namespaces/ns/loopruns/r/status",
            ("update", "loopruns/status"),
        ),
        ("GET", "https://h/apis/kloop.dev/v1alpha1/loopruns", ("list", "loopruns")),
        ("DELETE", "https://h/api/v1/namespaces/ns/configmaps", ("deletecollection", "configmaps")),
        ("DELETE", "https://h/api/v1/namespaces/ns/configmaps/c", ("delete", "configmaps")),
        ("GET", "https://h/api/v1/namespaces", ("list", "namespaces")),
        ("GET", "https://h/api/v1/namespaces/ns", ("get", "namespaces")),
        ("PATCH", "https://h/api/v1/nodes/n/status", ("patch", "nodes/status")),
        ("GET", "https://h/version", ("get", "")),
    ],
)
def test_request_kind_names_verb_and_resource_like_the_apiserver(
    method: str, url: str, expected: tuple[str, str]
) -> None:
    assert request_kind(method, url) == expected


def test_apiserver_and_kloop_counters_are_read_by_verb_and_resource() -> None:
    text = (
        "# TYPE apiserver_request_total counter\n"
        'apiserver_request_total{code="200",resource="pods",subresource="",verb="LIST"} 3\n'
        'apiserver_request_total{code="404",resource="pods",subresource="",verb="LIST"} 1\n'
        'apiserver_request_total{code="201",resource="pods",subresource="binding",verb="POST"} 2\n'
        'apiserver_request_total{code="200",resource="",subresource="",verb="GET"} 9\n'
    )
    assert apiserver_requests(text) == {("list", "pods"): 4, ("create", "pods/binding"): 2}
    ours = (
        "# TYPE kloop_api_requests_total counter\n"
        'kloop_api_requests_total{resource="loops",verb="get"} 5.0\n'
    )
    assert kloop_requests(ours) == {("get", "loops"): 5}


def test_cpu_seconds_read_utime_and_stime_even_with_spaces_in_the_name() -> None:
    fields = ["S"] + ["0"] * 10 + [str(3 * TICKS), str(2 * TICKS)] + ["0"] * 30
    assert cpu_seconds_of("42 (python -m x) " + " ".join(fields)) == 5.0


def times(run: str, role: str, added: float, ended: float | None) -> PodTimes:
    labels = {"kloop.dev/run": run, "kloop.dev/role": role}
    return PodTimes("ns", f"{run}-{role}-{added}", labels, added, ended, None)


def test_step_gaps_follow_each_run_in_creation_order() -> None:
    pods = [
        times("a", "maker", 0.0, 1.0),
        times("b", "maker", 0.5, 2.0),
        times("a", "checker", 1.25, 3.0),
        times("b", "checker", 2.5, None),  # still running: no gap after it
        times("a", "teardown", 3.125, 4.0),
    ]
    gaps = step_gaps(pods, lambda p: p.labels["kloop.dev/run"])
    assert sorted((g.before.labels["kloop.dev/role"], g.seconds) for g in gaps) == [
        ("checker", 0.125),
        ("maker", 0.25),
        ("maker", 0.5),
    ]


def test_parallel_pods_give_no_step_gap() -> None:
    pods = [times("a", "checker", 0.0, 2.0), times("a", "checker", 1.0, 2.5)]
    assert step_gaps(pods, lambda p: "a") == []


def test_timeline_keeps_first_sightings_of_termination_and_phase() -> None:
    pod: dict[str, Any] = {  # as Argo makes them: its wait sidecar first, main named
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "annotations": {"kubectl.kubernetes.io/default-container": "main"},
        },
        "spec": {"containers": [{"name": "wait"}, {"name": "main"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "wait", "state": {"running": {}}},
                {"name": "main", "state": {"terminated": {"exitCode": 0}}},
            ],
        },
    }
    t = PodTimes("ns", "p")
    record(t, pod, 1.0)
    record(t, {**pod, "status": {**pod["status"], "phase": "Succeeded"}}, 2.0)
    record(t, {**pod, "status": {**pod["status"], "phase": "Succeeded"}}, 3.0)
    assert (t.added, t.main_terminated, t.finished, t.terminated) == (1.0, 1.0, 2.0, 1.0)


def greeting_pod(role: str, iteration: int) -> dict[str, Any]:
    env = [
        {"name": "KLOOP_RUN", "value": "r"},
        {"name": "KLOOP_ITERATION", "value": str(iteration)},
    ]
    return {
        "metadata": {"name": f"r-{role}-{iteration}", "labels": {"kloop.dev/role": role}},
        "spec": {"containers": [{"name": "agent", "image": "busybox", "env": env}]},
    }


@pytest.mark.parametrize(
    ("iteration", "greeting", "verdict", "reason"),
    [
        (1, "helo wrld", Verdict.FAIL, "missing letter l in helo"),
        (2, "hello wrld", Verdict.FAIL, "missing letter o in wrld"),
        (3, "hello, world", Verdict.PASS, "greeting is right"),
    ],
)
def test_greeting_emulation_is_read_by_kloop_as_the_real_workload(
    iteration: int, greeting: str, verdict: Verdict, reason: str
) -> None:
    maker = greeting_pod("maker", iteration)
    maker["status"] = finished_status(maker, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z")[
        "status"
    ]
    seen = observe_pod(maker)
    assert (seen.phase, seen.exit_code) == ("Succeeded", 0)
    assert parse_maker_result(seen.message).artifacts == {"greeting": greeting}
    checker = greeting_pod("checker", iteration)
    checker["status"] = finished_status(checker, "t0", "t1")["status"]
    result = parse_checker_result(observe_pod(checker).message)
    assert (result.verdict, result.reasons) == (verdict, [reason])


def test_teardown_succeeds_without_a_message_and_running_is_not_terminated() -> None:
    assert outcome(greeting_pod("teardown", 3)) == (0, "")
    pod = greeting_pod("maker", 1)
    pod["status"] = running_status(pod, "t0")["status"]
    seen = observe_pod(pod)
    assert (seen.phase, seen.exit_code, seen.message) == ("Running", None, None)


def test_the_targets_table_says_which_targets_a_case_misses() -> None:
    from collections import Counter

    from e2e.bench.operator_only import CaseResult
    from e2e.bench.probes import Probes
    from e2e.bench.procstat import Memory
    from e2e.bench.report import targets_section

    writes = Counter({("create", "pods"): 7, ("create", "events"): 14, ("update", "x"): 27})
    case = CaseResult(
        1, 1, 0.6, Probes([0.02], [0.01], [0.03], [0.3], [0.5]), 0.17, Memory(76, 77), writes,
        Counter(), 3,
    )  # fmt: skip
    rows = {line.split(" | ")[0]: line for line in targets_section([case], None) if "|" in line}
    assert rows["| ≤ 5 API writes per iteration"].endswith("| 16.0 | **not met** |")
    assert rows["| overhead per step, p99 < 50 ms"].endswith("| 30 | met |")
    assert rows["| apply → first pod, p99 < 200 ms"].endswith("| 300 | **not met** |")


def test_the_first_container_is_the_main_one_without_a_default_container_annotation() -> None:
    pod: dict[str, Any] = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "agent"}, {"name": "push"}]},
        "status": {
            "containerStatuses": [
                {"name": "push", "state": {"terminated": {"exitCode": 0}}},
                {"name": "agent", "state": {"running": {}}},
            ]
        },
    }
    t = PodTimes("ns", "p")
    record(t, pod, 1.0)
    assert t.main_terminated is None
