"""The admission policies have one source: the chart's files; deploy/ is generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from e2e import admission

from kloop.api.crdgen import build_crds

pytestmark = pytest.mark.unit

CHART = Path(admission.ROOT) / "charts" / "kloop"


def test_deploy_copy_is_fresh() -> None:
    assert admission.DEPLOY_FILE.read_text() == admission.deploy_manifest(), (
        "deploy/admission/ is stale: run `make admission`"
    )


def test_trust_9_the_chart_ships_both_policies_from_its_files() -> None:
    names = {p["metadata"]["name"] for p in admission.policies()}
    assert names == {"kloop-agent-pods", "kloop-approvals"}
    template = (CHART / "templates" / "admission.yaml").read_text()
    assert 'list "agent-pods" "approvals"' in template
    assert '"files/admission/%s.yaml"' in template
    for policy in admission.policies():
        assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
        assert policy["spec"]["failurePolicy"] == "Fail"
    role = (CHART / "templates" / "approver-clusterrole.yaml").read_text()
    assert '.Files.Get "files/approver-rules.yaml"' in role
    assert admission.approver_rules() == [
        {"apiGroups": ["kloop.dev"], "resources": ["loopruns"], "verbs": ["approve"]}
    ]
    # the parameter is kloop's own cluster-scoped CRD (built-in kinds break: docs/admission.md)
    pods = next(p for p in admission.policies() if p["metadata"]["name"] == "kloop-agent-pods")
    identity = build_crds()["kloop.dev_operatoridentities.yaml"]["spec"]
    assert pods["spec"]["paramKind"] == {
        "apiVersion": f"{identity['group']}/{identity['versions'][0]['name']}",
        "kind": identity["names"]["kind"],
    }
    assert identity["scope"] == "Cluster"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["admission"]["enabled"] is True
