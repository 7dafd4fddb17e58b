"""pytest fixtures shared by tests/ and e2e/: the cluster, API clients and throw-away namespaces.

``cluster`` yields a kubeconfig path: the user's ``KUBECONFIG`` when ``KLOOP_TEST_KUBECONFIG`` is
set (so the suite runs on kind or any real cluster), otherwise the local harness cluster, started
once per session (and stopped at the end unless it was already up or ``KLOOP_KEEP_CLUSTER=1``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from e2e import incluster
from e2e.cluster import extra, local, node
from e2e.cluster.helm import helm
from e2e.crds import install_crds
from e2e.fleet import FLEET, TargetCluster, add_target_cluster
from e2e.operator_process import OperatorProcess, RunningOperator


def using_external_cluster() -> bool:
    """Whether the suite runs against the user's cluster instead of the local harness."""
    return bool(os.environ.get("KLOOP_TEST_KUBECONFIG"))


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Iterator[Path]:
    """A kubeconfig for a real cluster: the user's, or the local one, started once."""
    if using_external_cluster():
        path = Path(os.environ.get("KUBECONFIG", Path.home() / ".kube" / "config"))
        if not path.exists():
            pytest.fail(f"KLOOP_TEST_KUBECONFIG is set but the kubeconfig {path} does not exist")
        yield path
        return
    started_here = not local.any_running()
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # show build and start-up progress live
        print()
        kubeconfig = local.up()
    if not started_here:
        yield kubeconfig  # somebody else's cluster (make cluster-up): leave it running
        return
    try:
        yield kubeconfig
    finally:
        if os.environ.get("KLOOP_KEEP_CLUSTER") != "1":
            local.down()


@pytest.fixture(scope="session")
def api_client(cluster: Path) -> client.ApiClient:
    """A Python Kubernetes client bound to the test cluster."""
    return config.new_client_from_config(config_file=str(cluster))


@pytest.fixture
def namespace(api_client: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards.

    In chart mode it is one the session's in-cluster operator serves (``ic-*``, labelled).
    """
    meta = client.V1ObjectMeta(name=f"t-{uuid.uuid4().hex[:10]}")
    if incluster.chart_mode():
        key, value = incluster.NAMESPACE_LABEL
        meta = client.V1ObjectMeta(
            name=f"{incluster.NAMESPACE_PREFIX}{uuid.uuid4().hex[:10]}", labels={key: value}
        )
    name = meta.name
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=meta))
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def extra_cluster(cluster: Path) -> Path:
    """A second apiserver on the same etcd under its own prefix (local harness only)."""
    if using_external_cluster():
        pytest.skip("extra apiservers need the local harness (KLOOP_TEST_KUBECONFIG is set)")
    return extra.add_cluster("b").kubeconfig


@pytest.fixture(scope="session")
def fleet(cluster: Path) -> Iterator[dict[str, TargetCluster]]:
    """Three extra clusters (fleet-a, fleet-b, fleet-c) reachable from pods, by name.

    The ones this session started are stopped at the end unless ``KLOOP_KEEP_CLUSTER=1``.
    """
    if using_external_cluster():
        pytest.skip("the fleet needs the local harness (KLOOP_TEST_KUBECONFIG is set)")
    running_before = {name for name in FLEET if extra.is_running(name)}
    targets = {name: add_target_cluster(name) for name in FLEET}
    try:
        yield targets
    finally:
        if os.environ.get("KLOOP_KEEP_CLUSTER") != "1":
            for name in FLEET:
                if name not in running_before:
                    extra.remove_cluster(name)


NODE_CLUSTER = "fleet-b"


@pytest.fixture(scope="session")
def fleet_node(fleet: dict[str, TargetCluster]) -> Iterator[TargetCluster]:
    """fleet-b with a node of its own (kubelet ``fleet-b-node``, scheduler); yields fleet-b.

    Removed at the end unless it ran before the session or ``KLOOP_KEEP_CLUSTER=1``.
    """
    running_before = node.has_node(NODE_CLUSTER)
    node.add_node(NODE_CLUSTER)
    try:
        yield fleet[NODE_CLUSTER]
    finally:
        if not running_before and os.environ.get("KLOOP_KEEP_CLUSTER") != "1":
            node.remove_node(NODE_CLUSTER)


@pytest.fixture(scope="session")
def kloop_crds(api_client: client.ApiClient) -> list[str]:
    """The generated kloop CRDs, installed (or updated) and served."""
    return install_crds(api_client)


@pytest.fixture(scope="session")
def chart_release(cluster: Path, kloop_crds: list[str]) -> Iterator[Path]:
    """The chart installed once for the session from the local image; removed at the end.

    Only the release and its namespace go: the CRDs are the suite's (``kloop_crds``).
    """
    from e2e import image, install  # the image build needs buildah: only chart mode pays for it

    assert image.main([]) == 0, "make image failed"
    install.install(
        cluster,
        incluster.release_values(),
        release=incluster.RELEASE,
        namespace=incluster.RELEASE_NAMESPACE,
    )
    try:
        yield cluster
    finally:
        helm(
            cluster,
            "uninstall",
            incluster.RELEASE,
            f"--namespace={incluster.RELEASE_NAMESPACE}",
            "--wait",
        )
        client.CoreV1Api(config.new_client_from_config(config_file=str(cluster))).delete_namespace(
            incluster.RELEASE_NAMESPACE
        )


@pytest.fixture
def operator(
    request: pytest.FixtureRequest,
    cluster: Path,
    kloop_crds: list[str],
    namespace: str,
    tmp_path: Path,
) -> Iterator[RunningOperator]:
    """The kloop operator serving this test's namespace; its log on failure.

    A host process by default (loopback is allowed for egress: the suite's HTTP oracles are
    servers on 127.0.0.1); with ``KLOOP_E2E_OPERATOR=chart``, the session's in-cluster release.
    """
    running: RunningOperator
    if incluster.chart_mode():
        request.getfixturevalue("chart_release")
        in_cluster = incluster.InClusterOperator(cluster, tmp_path / "operator.log")
        in_cluster.attach()
        running = in_cluster
    else:
        proc = OperatorProcess(
            cluster, tmp_path / "operator.log", [namespace], ["--allow-egress-cidr", "127.0.0.0/8"]
        )
        proc.start()
        running = proc
    try:
        yield running
    finally:
        if isinstance(running, incluster.InClusterOperator):
            running.close()
            running.ensure_running()  # a test that stopped it leaves it running for the next
        else:
            running.stop()
        print(f"--- operator log (tail) ---\n{running.log_tail(60)}")
