"""Cluster Secrets: the access rule, what kubeconfigs are accepted, and what pods get (pure)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from kloop.adapters import targets
from kloop.adapters.clusters import MIN_TOKEN_SECONDS, token_seconds
from kloop.adapters.kubeconfig import (
    Endpoint,
    KubeconfigError,
    build_target_kubeconfig,
    namespace_allowed,
    parse_kubeconfig,
    parse_service_account,
)
from kloop.adapters.pods import render_pod
from kloop.api.looprun import LoopRunSpec
from kloop.core.model import PodRequest, Role
from tests.unit.builders import loop_spec

pytestmark = pytest.mark.unit

CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nca\n").decode()
ADMIN_KEY = base64.b64encode(b"-----BEGIN EC PRIVATE KEY-----\nadmin-key\n").decode()
ADMIN_CERT = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nadmin-cert\n").decode()
ADMIN_TOKEN = "admin-token-0123456789"


def kubeconfig(cluster: dict[str, Any] | None = None, user: dict[str, Any] | None = None) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "c",
                    "cluster": cluster
                    or {"server": "https://10.0.0.1:6443", "certificate-authority-data": CA},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": user
                    or {
                        "client-certificate-data": ADMIN_CERT,
                        "client-key-data": ADMIN_KEY,
                        "token": ADMIN_TOKEN,
                    },
                }
            ],
            "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "admin"}}],
            "current-context": "ctx",
        }
    )


@pytest.mark.parametrize(
    ("annotation", "namespace", "allowed"),
    [
        ("team-a", "team-a", True),
        ("team-a, team-b", "team-b", True),
        ("team-*", "team-c", True),
        ("team-?", "team-cc", False),
        ("team-a", "team-ab", False),
        ("team-a", "TEAM-A", False),
        ("*", "anything", True),
        ("", "team-a", False),
        (None, "team-a", False),
        (" , ", "team-a", False),
    ],
)
def test_allowed_namespaces_is_a_comma_list_of_names_or_globs_and_absent_means_none(
    annotation: str | None, namespace: str, allowed: bool
) -> None:
    assert namespace_allowed(annotation, namespace) is allowed


@pytest.mark.parametrize("value", ["", "agent", "/agent", "ns/", "ns/a/b", None])
def test_agent_service_account_must_be_namespace_slash_name(value: str | None) -> None:
    with pytest.raises(KubeconfigError):
        parse_service_account(value)
    assert parse_service_account(" kloop-agents/agent ") == ("kloop-agents", "agent")


def test_self_contained_kubeconfig_yields_the_endpoint_without_credentials() -> None:
    _, endpoint = parse_kubeconfig(kubeconfig())
    assert endpoint == Endpoint("https://10.0.0.1:6443", CA)


@pytest.mark.parametrize(
    ("cluster", "user", "refused"),
    [
        ({"server": "https://x", "certificate-authority": "/etc/ca.crt"}, None, "certificate"),
        (None, {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}, "tokenFile"),
        (None, {"client-key": "/root/key.pem", "client-certificate": "/c"}, "client-"),
        (None, {"exec": {"command": "sh", "args": ["-c", "id"]}}, "exec"),
        (None, {"auth-provider": {"name": "gcp"}}, "auth-provider"),
    ],
)
def test_kubeconfig_naming_files_or_running_plugins_is_refused(
    cluster: dict[str, Any] | None, user: dict[str, Any] | None, refused: str
) -> None:
    with pytest.raises(KubeconfigError, match=refused):
        parse_kubeconfig(kubeconfig(cluster, user))


def test_kubeconfig_without_https_server_is_refused() -> None:
    with pytest.raises(KubeconfigError, match="https"):
        parse_kubeconfig(kubeconfig({"server": "http://10.0.0.1:8080"}))


def test_unparsable_kubeconfig_error_quotes_no_content() -> None:
    text = f"users:\n- token: {ADMIN_TOKEN}\n  bad: [unclosed\n"
    with pytest.raises(KubeconfigError) as err:
        parse_kubeconfig(text)
    assert ADMIN_TOKEN not in str(err.value)
    assert "line" in str(err.value)


def test_target_kubeconfig_has_server_ca_and_minted_token_and_no_admin_credential() -> None:
    _, endpoint = parse_kubeconfig(kubeconfig())
    text = build_target_kubeconfig("prod-1", endpoint, "minted-token", "kloop-agents")
    for secret in (ADMIN_KEY, ADMIN_CERT, ADMIN_TOKEN):
        assert secret not in text
    doc = yaml.safe_load(text)
    assert doc["users"] == [{"name": "kloop-agent", "user": {"token": "minted-token"}}]
    assert doc["clusters"][0]["cluster"] == {
        "server": "https://10.0.0.1:6443",
        "certificate-authority-data": CA,
    }
    assert doc["contexts"][0]["context"]["namespace"] == "kloop-agents"
    assert doc["current-context"] == "prod-1"


@pytest.mark.parametrize(("deadline", "seconds"), [(None, 600), (60, 600), (900, 1020)])
def test_token_lives_for_the_pod_deadline_plus_a_margin_and_at_least_ten_minutes(
    deadline: int | None, seconds: int
) -> None:
    assert token_seconds(deadline) == seconds >= MIN_TOKEN_SECONDS


RUN = {
    "apiVersion": "kloop.dev/v1alpha1",
    "kind": "LoopRun",
    "metadata": {"name": "r1", "namespace": "team", "uid": "u-1"},
}
OWNER = {"apiVersion": "kloop.dev/v1alpha1", "kind": "LoopRun", "name": "r1", "uid": "u-1"}


def render(cluster: str) -> dict[str, Any]:
    req = PodRequest(f"r1-s0-{cluster}-i1-maker", Role.MAKER, 1, "canary", cluster)
    run_spec = LoopRunSpec.model_validate({"loopRef": {"name": "l"}})
    return render_pod(req, RUN, "l", loop_spec(), run_spec, "l-memory", OWNER)


def test_pod_of_a_remote_target_mounts_its_minted_kubeconfig_and_points_kubeconfig_at_it() -> None:
    pod = render("prod-1")
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KUBECONFIG"] == "/kloop/target/kubeconfig"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/kloop/target"] == {
        "name": "kloop-target",
        "mountPath": "/kloop/target",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["kloop-target"]["secret"] == {
        "secretName": "r1-s0-prod-1-i1-maker-target",
        "items": [{"key": "kubeconfig", "path": "kubeconfig"}],
    }
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_pod_of_the_local_cluster_gets_no_target_kubeconfig() -> None:
    pod = render("local")
    container = pod["spec"]["containers"][0]
    assert "KUBECONFIG" not in {e["name"] for e in container["env"]}
    assert "kloop-target" not in {v["name"] for v in pod["spec"]["volumes"]}


def _pod(name: str, cluster: str, phase: str, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"kloop.dev/cluster": cluster},
            "annotations": annotations,
        },
        "status": {"phase": phase},
    }


def test_ended_remote_pods_have_their_kubeconfig_secret_deleted_by_recorded_uid() -> None:
    pods = [
        _pod("a", "prod-1", "Succeeded", **{"kloop.dev/target-secret-uid": "s-a"}),
        _pod("b", "prod-1", "Running", **{"kloop.dev/target-secret-uid": "s-b"}),
        _pod("c", "local", "Failed"),
        _pod("d", "prod-2", "Failed"),
    ]
    assert targets.ended_remote_pods(pods) == {"a": "s-a", "d": None}


def test_token_expiry_per_cluster_is_the_latest_recorded_on_its_pods() -> None:
    at = "kloop.dev/token-expires-at"
    pods = [
        _pod("a", "prod-1", "Succeeded", **{at: "2026-11-26T10:00:00Z"}),
        _pod("b", "prod-1", "Running", **{at: "2026-11-26T11:00:00Z"}),
        _pod("c", "local", "Running", **{at: "2026-11-26T12:00:00Z"}),
    ]
    assert targets.token_expiry(pods) == {"prod-1": "2026-11-26T11:00:00Z"}


def test_target_secret_is_owned_by_the_run_and_not_a_cluster_secret() -> None:
    body = targets.render_target_secret("r1-s0-prod-1-i1-maker", RUN, OWNER, "prod-1", "kc")
    assert body["metadata"]["name"] == "r1-s0-prod-1-i1-maker-target"
    assert body["metadata"]["ownerReferences"] == [OWNER]
    assert body["metadata"]["labels"]["kloop.dev/run"] == "r1"
    assert "kloop.dev/cluster" not in body["metadata"]["labels"]
    assert body["stringData"] == {"kubeconfig": "kc"}
