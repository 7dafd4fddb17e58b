"""A real GitOps sync: Flux applies a Loop and a LoopRun from git and judges the run with kstatus.

Flux's source-controller and kustomize-controller (v1.9.6, built from source) run as host
processes; the repository is served on loopback. A later reconcile sees no drift, because the
operator writes only status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.crds import install_crds
from e2e.gitops.fixtures import flux, flux_logs, git
from e2e.gitops.flux import (
    GIT_REPOSITORIES,
    KUSTOMIZATIONS,
    FluxControllers,
    delete_flux_objects,
)
from e2e.gitops.git_server import GitServer
from e2e.gitops.workdir import Workdir
from e2e.helpers import wait_for
from e2e.loops import GROUP, VERSION, finished, greeting_loop
from e2e.operator_process import OperatorProcess

__all__ = ["flux", "flux_logs", "git"]  # fixtures, re-exported for pytest

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
SOURCE = GIT_REPOSITORIES
KUSTOMIZE = KUSTOMIZATIONS
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"


@pytest.fixture(autouse=True)
def _own_crds(api_client: client.ApiClient) -> None:
    """Install this checkout's CRDs again: the shared cluster's may have been replaced meanwhile.

    The LoopRun status default is what makes a new run InProgress for kstatus.
    """
    install_crds(api_client)


def _custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def _get(api: client.ApiClient, kind: tuple[str, str, str], ns: str, name: str) -> Json:
    group, version, plural = kind
    obj: Json = _custom(api).get_namespaced_custom_object(group, version, ns, plural, name)
    return obj


def _kloop(api: client.ApiClient, plural: str, ns: str, name: str) -> Json:
    return _get(api, (GROUP, VERSION, plural), ns, name)


def _ready(obj: Json) -> Json | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return dict(condition)
    return None


def _run_manifest(name: str, loop: str) -> Json:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoopRun",
        "metadata": {"name": name},
        "spec": {"loopRef": {"name": loop}, "context": {"ticket": "GITOPS-1"}},
    }


def _push_app(work: Workdir, loop: Json, run: Json, message: str) -> str:
    work.write_yaml("app/loop.yaml", loop)
    work.write_yaml("app/run.yaml", run)
    work.write_yaml(
        "app/kustomization.yaml",
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": ["loop.yaml", "run.yaml"],
        },
    )
    return work.commit_and_push(message)


def _sync(api: client.ApiClient, ns: str, url: str, timeout: str = "3m") -> None:
    """A GitRepository on the loopback server and a Kustomization that waits for health."""
    _custom(api).create_namespaced_custom_object(
        *SOURCE[:2],
        ns,
        SOURCE[2],
        {
            "apiVersion": f"{SOURCE[0]}/{SOURCE[1]}",
            "kind": "GitRepository",
            "metadata": {"name": "app"},
            # a fetch that gets no answer gives up after 20 s and is retried (default: 60 s,
            # as long as a test waits; CI saw one GET on loopback go unanswered once)
            "spec": {"url": url, "interval": "1m", "timeout": "20s", "ref": {"branch": "main"}},
        },
    )
    _custom(api).create_namespaced_custom_object(
        *KUSTOMIZE[:2],
        ns,
        KUSTOMIZE[2],
        {
            "apiVersion": f"{KUSTOMIZE[0]}/{KUSTOMIZE[1]}",
            "kind": "Kustomization",
            "metadata": {"name": "app"},
            "spec": {
                "interval": "10m",
                "path": "./app",
                "prune": True,
                "wait": True,
                "timeout": timeout,
                "targetNamespace": ns,
                "sourceRef": {"kind": "GitRepository", "name": "app"},
            },
        },
    )


def _request_reconcile(api: client.ApiClient, kind: tuple[str, str, str], ns: str) -> str:
    """Ask Flux to reconcile now, as ``flux reconcile`` does; returns the token it echoes."""
    token = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    patch = {"metadata": {"annotations": {REQUESTED_AT: token}}}
    group, version, plural = kind
    _custom(api).patch_namespaced_custom_object(group, version, ns, plural, "app", patch)
    return token


def _handled(api: client.ApiClient, kind: tuple[str, str, str], ns: str, token: str) -> Json | None:
    obj = _get(api, kind, ns, "app")
    return obj if (obj.get("status") or {}).get("lastHandledReconcileAt") == token else None


def _fetched(api: client.ApiClient, ns: str, sha: str) -> Json | None:
    """The GitRepository's artifact is at ``sha`` (a failed fetch is retried until it is)."""
    obj = _get(api, SOURCE, ns, "app")
    revision = ((obj.get("status") or {}).get("artifact") or {}).get("revision", "")
    return obj if revision.endswith(sha) else None


def _applied(api: client.ApiClient, ns: str, sha: str) -> Json | None:
    obj = _get(api, KUSTOMIZE, ns, "app")
    ready = _ready(obj) or {}
    revision = (obj.get("status") or {}).get("lastAppliedRevision", "")
    return obj if ready.get("status") == "True" and revision.endswith(sha) else None


def _apply_results(log: str, ns: str, sha: str) -> list[dict[str, str]]:
    """The change sets kustomize-controller logged for this namespace at commit ``sha``, in order.

    Each reconcile that reaches the apply logs one ``server-side apply completed`` line whose
    ``output`` maps every object to created, configured or unchanged.
    """
    found = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if (
            entry.get("msg") == "server-side apply completed"
            and entry.get("namespace") == ns
            and str(entry.get("revision", "")).endswith(sha)
        ):
            found.append(entry["output"])
    return found


def _fingerprint(obj: Json) -> Json:
    """What GitOps compares and what must not move: spec, generation, annotations, finalizers."""
    meta = obj["metadata"]
    return {
        "spec": obj["spec"],
        "generation": meta["generation"],
        "annotations": meta.get("annotations") or {},
        "finalizers": meta.get("finalizers") or [],
        "labels": meta.get("labels") or {},
    }


@dataclass
class App:
    """One test's app: a repository on the git server, a clone of it, the namespace it syncs to.

    Every test pushes the Loop ``greeting`` (as the test shapes it) and its run ``greeting-1``.
    """

    api: client.ApiClient
    ns: str
    url: str
    work: Workdir

    def push(self, loop: Json, message: str) -> str:
        """Commit and push the app with ``loop``; returns the commit."""
        return _push_app(self.work, loop, _run_manifest("greeting-1", "greeting"), message)

    def sync(self, timeout: str = "3m") -> None:
        """Point Flux at the repository: a GitRepository and a Kustomization into ``ns``."""
        _sync(self.api, self.ns, self.url, timeout)


@pytest.fixture
def app(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    flux_logs: FluxControllers,
    git: GitServer,
    tmp_path: Path,
) -> Iterator[App]:
    """A fresh repository for the test; its Flux objects are deleted while the controllers run."""
    url = git.create_repo(f"app-{namespace}")
    yield App(api_client, namespace, url, Workdir(url, tmp_path / "work"))
    delete_flux_objects(api_client, namespace)


def test_flux_syncs_a_run_to_success_without_drift_and_picks_up_a_changed_loop(
    api_client: client.ApiClient, app: App, flux_logs: FluxControllers
) -> None:
    ns = app.ns
    loop = greeting_loop()
    first = app.push(loop, "greeting loop")
    app.sync()

    # The Kustomization is Ready only once the run has succeeded: kstatus never reads the new
    # run as Current early (its status defaults to observedGeneration 0 until kloop observes it).
    ready_while_running = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        kustomization = _get(api_client, KUSTOMIZE, ns, "app")
        try:
            run = _kloop(api_client, "loopruns", ns, "greeting-1")
        except client.ApiException as err:
            if err.status != 404:
                raise
            run = {}
        if run and finished(run):
            break
        if (_ready(kustomization) or {}).get("status") == "True":
            ready_while_running.append((run.get("status") or {}).get("phase"))
        time.sleep(0.5)
    assert run["status"]["phase"] == "Succeeded", run["status"].get("message")
    assert ready_while_running == [], "Flux called the Kustomization Ready before the run ended"
    kustomization = wait_for(
        "Ready=True at the first commit", lambda: _applied(api_client, ns, first), 120
    )
    inventory = kustomization["status"]["inventory"]["entries"]
    assert sorted(e["id"] for e in inventory) == sorted(
        [f"{ns}_greeting_kloop.dev_Loop", f"{ns}_greeting-1_kloop.dev_LoopRun"]
    )

    # No drift: the operator wrote only status, so a forced reconcile applies nothing.
    before = {
        kind: _fingerprint(_kloop(api_client, kind, ns, name))
        for kind, name in (("loops", "greeting"), ("loopruns", "greeting-1"))
    }
    for fingerprint in before.values():
        assert not [a for a in fingerprint["annotations"] if "kopf" in a], fingerprint
        assert fingerprint["finalizers"] == [], fingerprint
    token = _request_reconcile(api_client, KUSTOMIZE, ns)
    again = wait_for(
        "the forced reconcile", lambda: _handled(api_client, KUSTOMIZE, ns, token), 120
    )
    assert (_ready(again) or {}).get("status") == "True", again["status"]
    assert again["status"]["lastAppliedRevision"] == kustomization["status"]["lastAppliedRevision"]
    assert again["status"]["inventory"] == kustomization["status"]["inventory"]
    after = {
        kind: _fingerprint(_kloop(api_client, kind, ns, name))
        for kind, name in (("loops", "greeting"), ("loopruns", "greeting-1"))
    }
    assert after == before
    created, *reapplied = _apply_results(flux_logs.kustomize.log_text(), ns, first)
    assert set(created.values()) == {"created"}, created
    assert reapplied, "kustomize-controller logged no apply for the forced reconcile"
    assert all(set(r.values()) == {"unchanged"} for r in reapplied), reapplied

    # A changed Loop in git is applied on the next reconcile.
    loop["spec"]["goal"] = "Make greeting.txt say exactly 'hello, world', synced by Flux."
    second = app.push(loop, "new goal")
    _request_reconcile(api_client, SOURCE, ns)
    wait_for("the new commit fetched", lambda: _fetched(api_client, ns, second), 120)
    _request_reconcile(api_client, KUSTOMIZE, ns)
    wait_for("Ready=True at the second commit", lambda: _applied(api_client, ns, second), 120)
    live = _kloop(api_client, "loops", ns, "greeting")
    assert live["spec"]["goal"] == loop["spec"]["goal"]
    assert live["metadata"]["generation"] == before["loops"]["generation"] + 1
    results = _apply_results(flux_logs.kustomize.log_text(), ns, second)
    assert results[0] == {
        f"Loop/{ns}/greeting": "configured",
        f"LoopRun/{ns}/greeting-1": "unchanged",
    }, results


def _health_check_failed(api: client.ApiClient, ns: str) -> Json | None:
    ready = _ready(_get(api, KUSTOMIZE, ns, "app")) or {}
    failed = ready.get("status") == "False" and ready.get("reason") == "HealthCheckFailed"
    return ready if failed else None


def test_a_halted_run_makes_the_kustomization_report_it_unhealthy(
    api_client: client.ApiClient, app: App
) -> None:
    ns = app.ns
    loop = greeting_loop()
    loop["spec"]["budget"] = {"maxIterations": 1}  # iteration 1 fails its checker: halted
    app.push(loop, "a loop that halts")
    app.sync()

    ready = wait_for(
        "the Kustomization to report the halted run",
        lambda: _health_check_failed(api_client, ns),
        240,
    )
    run = _kloop(api_client, "loopruns", ns, "greeting-1")
    assert (run["status"]["phase"], run["status"]["haltReason"]) == ("Halted", "MaxIterations")
    # kstatus reads Stalled=True as Failed, and Flux fails fast (before its 3m timeout)
    assert "failed early due to stalled resources" in ready["message"], ready
    assert f"LoopRun/{ns}/greeting-1 status: 'Failed'" in ready["message"], ready


def test_a_run_awaiting_approval_keeps_the_kustomization_waiting_until_its_timeout(
    api_client: client.ApiClient, app: App
) -> None:
    ns = app.ns
    loop = greeting_loop()
    loop["spec"]["stages"] = [{"name": "prod", "clusters": ["local"], "requireApproval": True}]
    app.push(loop, "a gated loop")
    app.sync(timeout="20s")

    ready = wait_for(
        "the Kustomization to time out", lambda: _health_check_failed(api_client, ns), 120
    )
    run = _kloop(api_client, "loopruns", ns, "greeting-1")
    assert run["status"]["phase"] == "AwaitingApproval", run["status"]
    # Ready=False without Stalled is InProgress for kstatus: not a failure, just not done
    assert "timeout waiting for" in ready["message"], ready
    assert f"LoopRun/{ns}/greeting-1 status: 'InProgress'" in ready["message"], ready
