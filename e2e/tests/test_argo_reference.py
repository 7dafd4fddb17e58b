"""Argo Workflows, the benchmark reference, runs kloop's greeting loop on the local cluster.

One workflow (about a minute of real pods): built from the module proxy on a cold cache (about
6 min), cached afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.argo import procstat
from e2e.argo.controller import STOP_GRACE, ArgoController
from e2e.argo.workflow import greeting_workflow, pods_of, submit, wait_finished

# a benchmark reference, not part of kloop: `make bench` runs it (the build takes ~6 min cold)
pytestmark = [pytest.mark.e2e, pytest.mark.bench]


def _nodes(wf: dict[str, Any], display_name: str) -> list[dict[str, Any]]:
    """The workflow's Pod nodes for one step, in the order they started."""
    nodes = [
        n
        for n in wf["status"]["nodes"].values()
        if n["type"] == "Pod" and n["displayName"] == display_name
    ]
    return sorted(nodes, key=lambda n: n["startedAt"])


def _outputs(node: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in node["outputs"]["parameters"]}


def test_argo_runs_the_greeting_loop_until_the_checker_passes_on_try_three(
    cluster: Path, namespace: str, api_client: client.ApiClient
) -> None:
    with ArgoController(namespace, requeue_seconds=1, kubeconfig=cluster) as argo:
        pid = argo.pid
        cpu_before = procstat.cpu_seconds(pid)
        submit(namespace, greeting_workflow("greeting"), api=api_client)
        wf = wait_finished(namespace, "greeting", timeout=240, api=api_client)
        assert procstat.cpu_seconds(pid) > cpu_before
        assert wf["status"]["phase"] == "Succeeded", argo.log_tail()
        checkers = _nodes(wf, "checker")
        assert [_outputs(c)["verdict"] for c in checkers] == ["fail", "fail", "pass"]
        assert _outputs(checkers[0])["reasons"] == "missing letter l in helo"
        assert [_outputs(m)["greeting"] for m in _nodes(wf, "maker")] == [
            "helo wrld",
            "hello wrld",
            "hello, world",
        ]
        assert len(_nodes(wf, "greeting.onExit")) == 1  # the teardown ran
        assert len(pods_of(namespace, "greeting", api=api_client)) == 7
        stopping = time.monotonic()
    assert argo.proc is not None and argo.proc.poll() is not None  # never left running
    assert time.monotonic() - stopping < STOP_GRACE + 5
