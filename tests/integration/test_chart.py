"""The chart as Helm renders it: hardened pod, probes, optional monitoring objects, bad values.

Rendering needs no cluster, but it needs helm, which the harness builds from the Go module proxy
(cached); so these tests sit with the integration tier rather than the pure unit tests.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.cluster.helm import build_helm

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "charts" / "kloop"


def _template(*sets: str) -> subprocess.CompletedProcess[str]:
    args = [str(build_helm()), "template", "kloop", str(CHART), "--namespace=kloop-system"]
    for value in sets:
        args += ["--set", value]
    return subprocess.run(args, capture_output=True, text=True)


def _render(*sets: str) -> dict[tuple[str, str], dict[str, Any]]:
    proc = _template(*sets)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_helm_lint_passes() -> None:
    proc = subprocess.run([str(build_helm()), "lint", str(CHART)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_render_runs_a_hardened_operator_with_probes_on_the_health_port() -> None:
    objects = _render()
    pod = objects[("Deployment", "kloop")]["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["cpu"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    kinds = {kind for kind, _ in objects}
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "Service"} <= kinds
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_the_webhook_receiver_is_off_by_default_and_gets_a_port_and_service_when_set() -> None:
    def operator(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
        pod = objects[("Deployment", "kloop")]["spec"]["template"]["spec"]
        container: dict[str, Any] = pod["containers"][0]
        return container

    default = _render()
    assert "--webhook-port" not in operator(default)["args"]
    assert "webhook" not in {p["name"] for p in operator(default)["ports"]}
    assert ("Service", "kloop-webhook") not in default
    on = _render("webhookReceiver.port=9292", "webhookReceiver.service.enabled=true")
    args = operator(on)["args"]
    assert args[args.index("--webhook-port") + 1] == "9292"
    assert {"name": "webhook", "containerPort": 9292, "protocol": "TCP"} in operator(on)["ports"]
    service = on[("Service", "kloop-webhook")]["spec"]
    assert service["ports"] == [
        {"name": "webhook", "port": 80, "targetPort": "webhook", "protocol": "TCP"}
    ]
    assert ("Service", "kloop-webhook") not in _render("webhookReceiver.service.enabled=true")


def test_monitoring_objects_ship_the_checked_rules_file_and_dashboard_verbatim() -> None:
    objects = _render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "grafana.dashboard.enabled=true",
    )
    rule = objects[("PrometheusRule", "kloop")]
    shipped = yaml.safe_load((CHART / "files" / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"] == shipped
    dashboard = objects[("ConfigMap", "kloop-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["kloop.json"]) == json.loads(
        (CHART / "files" / "grafana" / "kloop.json").read_text()
    )
    monitor = objects[("ServiceMonitor", "kloop")]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    # kloop's `namespace` label is the run's; without this Prometheus would rename it
    assert endpoint["honorLabels"] is True


def test_a_namespace_pattern_without_a_label_selector_is_refused() -> None:
    proc = _template("watchNamespaces={team-*}")
    assert proc.returncode != 0
    assert "admission.namespaceSelector" in proc.stderr


def test_policy_bindings_use_the_label_selector_when_given() -> None:
    objects = _render(
        "watchNamespaces={team-*}", "admission.namespaceSelector.matchLabels.team=yes"
    )
    bindings = [d for (kind, _), d in objects.items() if kind == "ValidatingAdmissionPolicyBinding"]
    assert len(bindings) == 2
    for binding in bindings:
        selector = binding["spec"]["matchResources"]["namespaceSelector"]
        assert selector == {"matchLabels": {"team": "yes"}}
    args = objects[("Deployment", "kloop")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["-n", "team-*"]


def test_install_notes_carry_the_argo_cd_health_checks_verbatim() -> None:
    proc = subprocess.run(
        [str(build_helm()), "install", "kloop", str(CHART), "--dry-run=client", "-n", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    for script in sorted((CHART / "files" / "argocd").glob("*.lua")):
        lines = [line for line in script.read_text().splitlines() if line.strip()]
        assert "\n".join("      " + line for line in lines) in "\n".join(
            line for line in notes.splitlines() if line.strip()
        ), script.name


def _release(release: str, *sets: str) -> dict[tuple[str, str], dict[str, Any]]:
    args = [str(build_helm()), "template", release, str(CHART), "--namespace=kloop-system"]
    for value in sets:
        args += ["--set", value]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_one_release_per_shard_passes_its_selector_and_clashes_with_no_other() -> None:
    def args(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> list[str]:
        pod = objects[("Deployment", name)]["spec"]["template"]["spec"]
        found: list[str] = pod["containers"][0]["args"]
        return found

    assert "--shard-label" not in args(_render(), "kloop")
    shard_a = _release("kloop-a", "shardLabel=kloop.dev/shard=a")
    default = _release("kloop-default", "shardLabel=!kloop.dev/shard")
    a = args(shard_a, "kloop-a")
    assert a[a.index("--shard-label") + 1] == "kloop.dev/shard=a"
    d = args(default, "kloop-default")
    assert d[d.index("--shard-label") + 1] == "!kloop.dev/shard"
    # two releases in one namespace: every object (cluster-wide ones too) has its own name
    assert not shard_a.keys() & default.keys()


def test_a_second_shard_release_runs_as_the_first_ones_service_account() -> None:
    shard_b = _release(
        "kloop-b",
        "shardLabel=kloop.dev/shard=b",
        "serviceAccount.create=false",
        "serviceAccount.name=kloop-a",
        "admission.enabled=false",
    )
    kinds = {kind for kind, _ in shard_b}
    assert "ServiceAccount" not in kinds
    assert not kinds & {"ValidatingAdmissionPolicy", "OperatorIdentity"}
    pod = shard_b[("Deployment", "kloop-b")]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kloop-a"
    bindings = [d for (k, _), d in shard_b.items() if k in ("ClusterRoleBinding", "RoleBinding")]
    assert bindings
    for binding in bindings:
        assert [s["name"] for s in binding["subjects"]] == ["kloop-a"]
    # the first release's policy names that account as the one operator identity
    identity = _release("kloop-a", "shardLabel=kloop.dev/shard=a")[
        ("OperatorIdentity", "kloop-a-kloop-system")
    ]
    assert identity["spec"]["username"] == "system:serviceaccount:kloop-system:kloop-a"
