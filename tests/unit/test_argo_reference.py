"""The Argo benchmark reference's pure parts: the workflow it submits and the /proc sampling."""

from __future__ import annotations

import os
from pathlib import Path

from e2e.argo import procstat
from e2e.argo.controller import _crd_names, controller_configmap
from e2e.argo.workflow import MAX_ITERATIONS, greeting_workflow
from e2e.cluster.images import BUSYBOX_IMAGE


def test_greeting_workflow_recurses_only_on_a_failed_verdict_below_the_cap() -> None:
    wf = greeting_workflow("g1")
    loop = next(t for t in wf["spec"]["templates"] if t["name"] == "loop")
    (maker,), (checker,), (again,) = loop["steps"]
    assert (maker["template"], checker["template"], again["template"]) == (
        "maker",
        "checker",
        "loop",
    )
    assert again["when"] == (
        "{{steps.checker.outputs.parameters.verdict}} == fail && "
        f"{{{{inputs.parameters.iteration}}}} < {MAX_ITERATIONS}"
    )
    assert MAX_ITERATIONS == 5


def test_greeting_workflow_passes_the_makers_output_to_the_checker() -> None:
    loop = greeting_workflow("g1")["spec"]["templates"][0]
    checker_args = loop["steps"][1][0]["arguments"]["parameters"]
    assert checker_args == [
        {"name": "greeting", "value": "{{steps.maker.outputs.parameters.greeting}}"}
    ]


def test_greeting_workflow_has_a_teardown_exit_handler_and_only_local_images() -> None:
    spec = greeting_workflow("g1")["spec"]
    assert spec["onExit"] == "teardown"
    containers = [t["container"] for t in spec["templates"] if "container" in t]
    assert {t["name"] for t in spec["templates"]} == {"loop", "maker", "checker", "teardown"}
    assert all(c["image"] == BUSYBOX_IMAGE for c in containers)
    assert all(c["imagePullPolicy"] == "IfNotPresent" for c in containers)


def test_controller_configmap_names_the_local_executor_image() -> None:
    cm = controller_configmap("ns", "kloop.local/argoexec:v4.0.5-abc", 9999)
    assert cm["metadata"] == {"name": "workflow-controller-configmap", "namespace": "ns"}
    assert "image: kloop.local/argoexec:v4.0.5-abc\n" in cm["data"]["executor"]
    assert "port: 9999\n" in cm["data"]["metricsConfig"]


def test_crd_names_come_from_argos_file_names(tmp_path: Path) -> None:
    for plural in ("workflows", "workflowtaskresults"):
        (tmp_path / f"argoproj.io_{plural}.yaml").write_text("")
    (tmp_path / "kustomization.yaml").write_text("")
    assert _crd_names(tmp_path) == ["workflows.argoproj.io", "workflowtaskresults.argoproj.io"]


def test_procstat_reads_this_process_cpu_and_memory() -> None:
    sum(i * i for i in range(2_000_000))  # burn some CPU so the counters are not all zero
    times = os.times()
    cpu = procstat.cpu_seconds(os.getpid())
    assert abs(cpu - (times.user + times.system)) < 0.05
    assert procstat.peak_rss_mib(os.getpid()) >= procstat.rss_mib(os.getpid()) > 1
