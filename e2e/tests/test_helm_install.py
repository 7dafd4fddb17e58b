"""``make install`` as a user runs it: the chart, the local image, a Loop applied with kubectl."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from e2e import image, install
from e2e.cluster import oci
from e2e.cluster.paths import run_kubectl
from e2e.crds import install_crds
from e2e.helpers import wait_for
from e2e.loops import MANIFESTS, run_pods, wait_finished

pytestmark = pytest.mark.e2e

# Its own release, serving only the test's namespace, so a developer's `make install` and other
# sessions' operators are left alone. The uninstall still removes the kloop CRDs, as
# `make uninstall` does (the test puts them back for the rest of the suite).
RELEASE = "kloop-it"
RELEASE_NAMESPACE = "kloop-it-system"


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    return run_kubectl(kubeconfig, *args, stdin=stdin).stdout


def test_installed_chart_runs_the_greeting_loop_in_cluster_and_uninstall_leaves_nothing(
    cluster: Path, api_client: client.ApiClient, kloop_crds: list[str], namespace: str
) -> None:
    assert image.main([]) == 0
    install.install(cluster, {"watchNamespaces": [namespace]}, RELEASE, RELEASE_NAMESPACE)
    try:
        deployment = client.AppsV1Api(api_client).read_namespaced_deployment(
            RELEASE, RELEASE_NAMESPACE
        )
        assert deployment.status.ready_replicas == 1
        container = deployment.spec.template.spec.containers[0]
        assert container.image == oci.OPERATOR.ref()
        assert container.readiness_probe.http_get.port == "health"
        assert container.security_context.read_only_root_filesystem is True

        _kubectl(cluster, "apply", "-n", namespace, "-f", str(MANIFESTS / "greeting-loop.yaml"))
        run = "apiVersion: kloop.dev/v1alpha1\nkind: LoopRun\nmetadata: {name: greeting-1}\n"
        _kubectl(
            cluster,
            "create",
            "-n",
            namespace,
            "-f",
            "-",
            stdin=run + "spec: {loopRef: {name: greeting}}\n",
        )
        status = wait_finished(api_client, namespace, "greeting-1", timeout=240)["status"]
        assert status["phase"] == "Succeeded"
        assert status["iteration"] == 3
        # The chart's admission policy lets only the operator's ServiceAccount create agent pods,
        # so these exist because the in-cluster operator made them; its log names the run.
        assert run_pods(api_client, namespace, "greeting-1")
        logs = _kubectl(cluster, "logs", "-n", RELEASE_NAMESPACE, f"deployment/{RELEASE}")
        assert '"run": "greeting-1"' in logs
    finally:
        left = install.uninstall(cluster, RELEASE, RELEASE_NAMESPACE)
        install_crds(api_client)  # the rest of the suite needs them back
    assert left == []
    wait_for("pods gone", lambda: not run_pods(api_client, namespace, "greeting-1"), 60)
