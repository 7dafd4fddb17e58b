"""Drift is measured against a real apiserver: dry-run applies, conflicts, missing objects.

Objects are made the way a maker would (server-side apply as ``maker``) and changed the way a
human would (an update as ``kubectl-edit``); the measurement must name exactly what drifted.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from kloop.adapters import drift
from kloop.adapters.apply import _measure_drift
from kloop.adapters.kube import Kube
from kloop.adapters.observe import Caches, Snapshot, drift_key
from kloop.api.loop import Drift, LoopSpec
from kloop.api.looprun import LoopRunSpec, LoopRunStatus
from kloop.core.model import DriftOutcome, MeasureDrift, ObservedLoop, ObservedRun

pytestmark = pytest.mark.integration


def configmap(namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def deployment(namespace: str, image: str = "busybox:1", replicas: int = 0) -> dict[str, Any]:
    labels = {"app": "api"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "api", "image": image}]},
            },
        },
    }


def server_side_apply(api: client.ApiClient, obj: dict[str, Any], manager: str = "maker") -> None:
    """Apply as a maker would (``kubectl apply --server-side``)."""
    plural = {"ConfigMap": "configmaps", "Deployment": "deployments"}[obj["kind"]]
    base = "/api/v1" if obj["apiVersion"] == "v1" else f"/apis/{obj['apiVersion']}"
    path = f"{base}/namespaces/{obj['metadata']['namespace']}/{plural}/{obj['metadata']['name']}"
    drift._rest(
        api,
        "PATCH",
        path,
        [("fieldManager", manager), ("force", "true")],
        obj,
        "application/apply-patch+yaml",
    )


def edit_by_hand(api: client.ApiClient, namespace: str, name: str, data: dict[str, str]) -> None:
    """Change a ConfigMap the way ``kubectl edit`` does: an update under its own manager."""
    core = client.CoreV1Api(api)
    cm = core.read_namespaced_config_map(name, namespace)
    cm.data = {**(cm.data or {}), **data}
    core.replace_namespaced_config_map(name, namespace, cm, field_manager="kubectl-edit")


def measure(api: client.ApiClient, desired: list[dict[str, Any]]) -> DriftOutcome:
    return asyncio.run(drift.measure(Kube(api), desired))


def test_identical_objects_do_not_drift_even_with_server_defaults_and_status(
    api_client: client.ApiClient, namespace: str
) -> None:
    desired = [configmap(namespace, "settings", {"mode": "y"}), deployment(namespace)]
    for obj in desired:
        server_side_apply(api_client, obj)
    assert measure(api_client, desired) == DriftOutcome(0, [])


def test_a_value_changed_by_hand_is_drift_naming_the_field_and_the_editor(
    api_client: client.ApiClient, namespace: str
) -> None:
    desired = [configmap(namespace, "settings", {"mode": "y"}), deployment(namespace)]
    for obj in desired:
        server_side_apply(api_client, obj)
    edit_by_hand(api_client, namespace, "settings", {"mode": "x"})
    apps = client.AppsV1Api(api_client)
    apps.patch_namespaced_deployment(
        "api", namespace, {"spec": {"replicas": 3}}, field_manager="kubectl-edit"
    )
    outcome = measure(api_client, desired)
    assert outcome.error is None
    assert outcome.objects == 2
    assert outcome.details == [
        f'ConfigMap {namespace}/settings: data.mode is "x", want "y" (set by kubectl-edit)',
        f"Deployment {namespace}/api: spec.replicas is 3, want 0 (set by kubectl-edit)",
    ]


def test_a_field_the_live_object_lacks_is_drift_without_any_conflict(
    api_client: client.ApiClient, namespace: str
) -> None:
    server_side_apply(api_client, configmap(namespace, "settings", {"mode": "y"}))
    desired = configmap(namespace, "settings", {"mode": "y", "level": "3"})
    desired["metadata"]["labels"] = {"tier": "gold"}
    outcome = measure(api_client, [desired])
    assert outcome.objects == 1
    assert outcome.details == [
        f'ConfigMap {namespace}/settings: metadata.labels is unset, want {{"tier": "gold"}}',
        f'ConfigMap {namespace}/settings: data.level is unset, want "3"',
    ]


def test_a_missing_object_is_drift(api_client: client.ApiClient, namespace: str) -> None:
    server_side_apply(api_client, configmap(namespace, "here", {"a": "b"}))
    desired = [configmap(namespace, "here", {"a": "b"}), deployment(namespace)]
    desired.append(configmap(f"{namespace}-nowhere", "elsewhere", {"a": "b"}))
    outcome = measure(api_client, desired)
    assert outcome.objects == 2
    assert outcome.details == [
        f"Deployment {namespace}/api: missing",
        f"ConfigMap {namespace}-nowhere/elsewhere: missing",
    ]


def test_fields_only_another_manager_owns_are_not_drift(
    api_client: client.ApiClient, namespace: str
) -> None:
    desired = configmap(namespace, "settings", {"mode": "y"})
    server_side_apply(api_client, desired)
    edit_by_hand(api_client, namespace, "settings", {"extra": "theirs"})
    client.CoreV1Api(api_client).patch_namespaced_config_map(
        "settings", namespace, {"metadata": {"labels": {"team": "b"}}}, field_manager="kubectl-edit"
    )
    assert measure(api_client, [desired]) == DriftOutcome(0, [])


def test_nothing_is_persisted_in_the_target(api_client: client.ApiClient, namespace: str) -> None:
    server_side_apply(api_client, configmap(namespace, "settings", {"mode": "y"}))
    core = client.CoreV1Api(api_client)
    before = core.read_namespaced_config_map("settings", namespace)
    outcome = measure(
        api_client,
        [configmap(namespace, "settings", {"mode": "z"}), configmap(namespace, "new", {"a": "b"})],
    )
    assert outcome.objects == 2
    after = core.read_namespaced_config_map("settings", namespace)
    assert after.metadata.resource_version == before.metadata.resource_version
    assert {m.manager for m in after.metadata.managed_fields} == {"maker"}
    assert not core.list_namespaced_config_map(namespace, field_selector="metadata.name=new").items


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({"apiVersion": "v1", "kind": "Gadget"}, "the cluster serves no kind Gadget in v1"),
        (
            {"apiVersion": "nothing.kloop.dev/v1", "kind": "Gadget"},
            "the cluster serves no API nothing.kloop.dev/v1",
        ),
        ({"apiVersion": "v1", "kind": "ConfigMap", "dta": {}}, "dta: field not declared"),
    ],
)
def test_what_cannot_be_measured_is_an_error_counting_nothing(
    api_client: client.ApiClient, namespace: str, obj: dict[str, Any], error: str
) -> None:
    server_side_apply(api_client, configmap(namespace, "x", {"a": "b"}))
    obj = {**obj, "metadata": {"name": "x", "namespace": namespace}}
    outcome = measure(api_client, [configmap(namespace, "other", {}), obj])
    assert outcome.objects == 0
    assert outcome.error is not None and error in outcome.error


def test_forbidden_reads_are_an_error(api_client: client.ApiClient, namespace: str) -> None:
    """A target client without rights (a ServiceAccount with no roles) cannot pass."""
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    conf = client.Configuration()
    conf.host = api_client.configuration.host
    conf.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    conf.api_key = {"authorization": f"Bearer {token}"}
    outcome = measure(client.ApiClient(conf), [configmap(namespace, "settings", {"a": "b"})])
    assert outcome.objects == 0
    assert outcome.error is not None and "cannot read it (403)" in outcome.error


def test_an_unreachable_apiserver_is_an_error(namespace: str) -> None:
    conf = client.Configuration()
    conf.host = "https://127.0.0.1:1"  # loopback, nothing listens
    conf.retries = False
    outcome = measure(client.ApiClient(conf), [configmap(namespace, "settings", {"a": "b"})])
    assert outcome.objects == 0
    assert outcome.error is not None
    assert outcome.error.startswith("cannot reach the target's apiserver")


def test_secret_values_are_hidden(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t-live"}}
    )
    desired = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds", "namespace": namespace},
        "stringData": {"token": "s3cr3t-wanted"},
    }
    outcome = measure(api_client, [desired])
    assert outcome.objects == 1
    assert outcome.details == [f"Secret {namespace}/creds: data.token differs (value hidden)"]


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        (
            configmap("kube-system", "extension-apiserver-authentication", {}),
            "in the local cluster drift is measured only in the run's namespace",
        ),
        (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}},
            "Namespace kube-system: cluster-scoped objects are not measured in the local cluster",
        ),
    ],
)
def test_in_the_local_cluster_only_the_runs_namespace_is_looked_into(
    api_client: client.ApiClient, namespace: str, obj: dict[str, Any], error: str
) -> None:
    """The operator's identity reads more than a tenant may: no peeking through drift."""
    kube = Kube(api_client)
    assert asyncio.run(drift.measure(kube, [obj])).error is None  # unconfined: measured
    confined = asyncio.run(drift.measure(kube, [obj], confine_to=namespace))
    assert confined.objects == 0
    assert confined.error is not None and error in confined.error
    # an object without a namespace is looked for in the run's namespace
    server_side_apply(api_client, configmap(namespace, "mine", {"a": "b"}))
    mine = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mine"}, "data": {}}
    assert asyncio.run(drift.measure(kube, [mine], confine_to=namespace)) == DriftOutcome(0, [])


def test_desired_objects_load_from_a_configmap_of_yaml_documents(
    api_client: client.ApiClient, namespace: str
) -> None:
    server_side_apply(api_client, configmap(namespace, "a", {"k": "v"}))
    docs = "\n---\n".join(
        json.dumps(configmap(namespace, n, {"k": "v"})) for n in ("a", "b")
    )  # JSON is YAML
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "desired"}, "data": {"all.yaml": docs}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "broken"}, "data": {"x.yaml": "a: [nope"}}
    )
    kube = Kube(api_client)

    def stage(name: str) -> DriftOutcome:
        spec = Drift.model_validate({"manifestsConfigMap": name})
        return asyncio.run(drift.measure_stage(kube, namespace, spec, kube))

    assert stage("desired") == DriftOutcome(1, [f"ConfigMap {namespace}/b: missing"])
    broken = stage("broken")
    assert broken.objects == 0 and broken.error is not None
    assert broken.error.startswith("ConfigMap 'broken': x.yaml: not valid YAML")
    absent = stage("absent")
    assert absent.error is not None and "'absent': cannot read it (404)" in absent.error


def snapshot(namespace: str, drift_spec: dict[str, Any], clusters: list[str]) -> Snapshot:
    """A run whose one stage checks drift in ``clusters`` (what apply needs of it)."""
    checker = {"name": "t", "template": {"spec": {"containers": [{"name": "c", "image": "check"}]}}}
    loop = LoopSpec.model_validate(
        {
            "goal": "roll out",
            "maker": {"template": {"spec": {"containers": [{"name": "m", "image": "i"}]}}},
            "checkers": [checker],
            "stages": [{"name": "canary", "clusters": clusters, "drift": drift_spec}],
        }
    )
    uid = str(uuid.uuid4())
    observed = ObservedRun(
        name="run",
        namespace=namespace,
        generation=1,
        spec=LoopRunSpec.model_validate({"loopRef": {"name": "l"}}),
        status=LoopRunStatus(),
        loop=ObservedLoop("l", loop),
        now=datetime.now(UTC),
        uid=uid,
    )
    run = {"metadata": {"name": "run", "namespace": namespace, "uid": uid}}
    return Snapshot(observed, run, None)


def test_measure_drift_runs_in_the_background_in_the_named_cluster_and_wakes_the_run(
    api_client: client.ApiClient, namespace: str, extra_cluster: Path
) -> None:
    """The same desired object: in sync in cluster b, missing in local, unknown cluster errs.

    It names no namespace: ``default`` in cluster b, the run's namespace in the local cluster.
    """
    other = config.new_client_from_config(config_file=str(extra_cluster))
    name = f"drift-{uuid.uuid4().hex[:8]}"
    server_side_apply(other, configmap("default", name, {"mode": "y"}))
    desired = configmap("default", name, {"mode": "y"})
    del desired["metadata"]["namespace"]
    woken: list[tuple[str, str]] = []

    async def target_client(cluster: str) -> Kube:
        if cluster == "b":
            return Kube(other)
        raise LookupError(f"no cluster {cluster!r}")

    async def scenario() -> Caches:
        caches = Caches(wake=lambda ns, n: woken.append((ns, n)), target_client=target_client)
        snap = snapshot(namespace, {"resources": [desired]}, ["b", "local", "gone"])
        kube = Kube(api_client)
        for cluster in ("b", "local", "gone"):
            _measure_drift(kube, snap, MeasureDrift(1, "canary", cluster), caches)
            _measure_drift(kube, snap, MeasureDrift(1, "canary", cluster), caches)  # once
        assert len(caches.pending) == 3
        await asyncio.gather(*caches.pending.values())
        assert not caches.pending
        uid = snap.observed.uid
        assert drift_key(uid, 1, "b") == (uid, 1, "drift/b")
        return caches

    try:
        caches = asyncio.run(scenario())
    finally:
        client.CoreV1Api(other).delete_namespaced_config_map(name, "default")
    outcomes = {cluster: o for (_, _, cluster), o in caches.drift.items()}
    assert outcomes["b"] == DriftOutcome(0, [])
    assert outcomes["local"] == DriftOutcome(1, [f"ConfigMap {namespace}/{name}: missing"])
    assert outcomes["gone"].objects == 0
    assert outcomes["gone"].error == "no client for the target: no cluster 'gone'"
    assert woken == [(namespace, "run")] * 3
    uid = next(iter(caches.drift))[0]
    caches.forget(uid)
    assert not caches.drift
