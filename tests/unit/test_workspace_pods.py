"""The workspace as rendered into pods, read back from them, and kloop-agent's pure parts."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from kloop.adapters.pods import observe_pod, render_pod
from kloop.api.gitreport import GitError
from kloop.api.looprun import LoopRunSpec
from kloop.cli.workspace import Settings, agent_head, classify, git_environment
from kloop.core.model import Checkout, PodRequest, Role
from kloop.core.workspace import CLONE_CONTAINER, PUSH_CONTAINER
from tests.unit.builders import loop_spec

pytestmark = pytest.mark.unit

RUN = {"metadata": {"name": "r1", "namespace": "team", "uid": "u-1"}}
OWNER = {"apiVersion": "kloop.dev/v1alpha1", "kind": "LoopRun", "name": "r1", "uid": "u-1"}
GIT = {"git": {"url": "http://git.example/app.git", "secretRef": {"name": "git-creds"}}}
SHA = "d" * 40


def render(req: PodRequest, **loop: Any) -> dict[str, Any]:
    spec = loop_spec(workspace={"git": {**GIT["git"], "push": True}}, **loop)
    run_spec = LoopRunSpec.model_validate({"loopRef": {"name": "l"}})
    return render_pod(req, RUN, "l", spec, run_spec, "l-memory", OWNER)


def maker(checkout: Checkout | None) -> PodRequest:
    return PodRequest("r1-s0-local-i2-maker", Role.MAKER, 2, "default", "local", workspace=checkout)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def test_a_pushing_maker_gets_a_clone_init_container_and_a_native_push_sidecar() -> None:
    pod = render(maker(Checkout("kloop/r1/default-local-i2", "main", push=True)))
    spec = pod["spec"]
    inits = {c["name"]: c for c in spec["initContainers"]}
    assert [c["name"] for c in spec["initContainers"]] == [CLONE_CONTAINER, PUSH_CONTAINER]
    assert "restartPolicy" not in inits[CLONE_CONTAINER]
    assert inits[PUSH_CONTAINER]["restartPolicy"] == "Always"
    assert inits[CLONE_CONTAINER]["command"] == ["kloop-agent", "workspace", "clone"]
    assert inits[PUSH_CONTAINER]["command"] == ["kloop-agent", "workspace", "push"]
    clone_env = env_of(inits[CLONE_CONTAINER])
    assert clone_env["KLOOP_GIT_START"] == "main"
    assert clone_env["KLOOP_BRANCH"] == "kloop/r1/default-local-i2"
    assert clone_env["KLOOP_GIT_PUSH_TIMEOUT"] == "25"  # 30 s default grace, 5 s to report
    assert clone_env["KLOOP_GIT_TOKEN"] == {
        "secretKeyRef": {"name": "git-creds", "key": "token", "optional": True}
    }
    for container in spec["initContainers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["terminationMessagePolicy"] == "File"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kloop-workspace"] == {"name": "kloop-workspace", "emptyDir": {}}
    agent = spec["containers"][0]
    mount = next(m for m in agent["volumeMounts"] if m["mountPath"] == "/kloop/workspace")
    assert mount["readOnly"] is False
    agent_env = env_of(agent)
    assert agent_env["KLOOP_WORKSPACE"] == "/kloop/workspace"
    assert not [k for k in agent_env if k.startswith("KLOOP_GIT_")], "no credentials for agents"
    assert "git-creds" not in json.dumps(agent)


def test_a_checker_gets_the_exact_commit_read_only_and_no_push() -> None:
    checkout = Checkout("kloop/r1/default-local-i2", "kloop/r1/default-local-i2", SHA, False, True)
    req = PodRequest(
        "r1-s0-local-i2-check-tests",
        Role.CHECKER,
        2,
        "default",
        "local",
        checker="tests",
        workspace=checkout,
    )
    spec = render(req)["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [CLONE_CONTAINER]
    assert env_of(spec["initContainers"][0])["KLOOP_GIT_COMMIT"] == SHA
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "kloop-workspace")
    assert mount == {"name": "kloop-workspace", "mountPath": "/kloop/workspace", "readOnly": True}
    assert "KLOOP_BASE_COMMIT" not in env_of(spec["containers"][0]), "no base recorded: none"


def test_a_checker_is_told_the_commit_the_maker_started_at() -> None:
    checkout = Checkout("kloop/r1/default-local-i2", "kloop/r1/default-local-i2", SHA, False, True,
                        base="b" * 40)  # fmt: skip
    req = PodRequest("r1-s0-local-i2-check-tests", Role.CHECKER, 2, "default", "local",
                     checker="tests", workspace=checkout)  # fmt: skip
    spec = render(req)["spec"]
    agent = env_of(spec["containers"][0])
    assert agent["KLOOP_BASE_COMMIT"] == "b" * 40
    clone = env_of(spec["initContainers"][0])
    assert clone["KLOOP_GIT_BASE"] == "b" * 40, "the clone fetches it: the checkout is shallow"
    assert agent["GIT_CONFIG_VALUE_0"] == "/kloop/workspace"


def test_a_pod_without_a_checkout_has_no_workspace() -> None:
    spec = render(maker(None))["spec"]
    assert not spec.get("initContainers")
    assert "KLOOP_WORKSPACE" not in env_of(spec["containers"][0])


def test_the_templates_own_init_containers_run_after_the_clone_and_grace_sets_the_push_time() -> (
    None
):
    template = {
        "spec": {
            "terminationGracePeriodSeconds": 90,
            "initContainers": [{"name": "prepare", "image": "x"}],
            "containers": [{"name": "main", "image": "maker:1"}],
        }
    }
    pod = render(
        maker(Checkout("b", "main", push=True)), maker={"template": template, "timeoutSeconds": 60}
    )
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == [CLONE_CONTAINER, PUSH_CONTAINER, "prepare"]
    assert env_of(inits[1])["KLOOP_GIT_PUSH_TIMEOUT"] == "85"


def test_kloop_init_container_ends_are_read_back_from_the_pod() -> None:
    pod = {
        "metadata": {"name": "p", "uid": "u"},
        "spec": {"containers": [{"name": "main"}]},
        "status": {
            "phase": "Succeeded",
            "initContainerStatuses": [
                {"name": CLONE_CONTAINER, "state": {"terminated": {"exitCode": 0, "message": "c"}}},
                {"name": PUSH_CONTAINER, "state": {"running": {}}},
                {"name": "prepare", "state": {"terminated": {"exitCode": 0}}},
            ],
            "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 0}}}],
        },
    }
    observed = observe_pod(pod)
    assert set(observed.kloop_containers) == {CLONE_CONTAINER, PUSH_CONTAINER}
    clone = observed.kloop_containers[CLONE_CONTAINER]
    assert (clone.terminated, clone.exit_code, clone.message) == (True, 0, "c")
    assert observed.kloop_containers[PUSH_CONTAINER].terminated is False


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("! refs/heads/x [rejected] (fetch first)", GitError.PUSH_REJECTED),
        ("! [rejected] x -> x (non-fast-forward)", GitError.PUSH_REJECTED),
        ("fatal: unable to access 'http://g/': Failed to connect", GitError.REMOTE_UNAVAILABLE),
        ("fatal: Authentication failed for 'http://g/'", GitError.REMOTE_UNAVAILABLE),
        ("fatal: couldn't find remote ref nope", GitError.CHECKOUT_FAILED),
    ],
)
def test_git_output_is_classified_into_a_reason(output: str, expected: GitError) -> None:
    assert classify(output, GitError.CHECKOUT_FAILED) is expected


def test_credentials_become_one_header_in_git_config_env_and_are_masked() -> None:
    token = Settings("http://g/a.git", "main", "b", Path("/w"), token="s3cret-token")
    env = git_environment(token)
    header = "Authorization: Basic " + base64.b64encode(b"x-access-token:s3cret-token").decode()
    count = int(env["GIT_CONFIG_COUNT"])
    keys = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(count)}
    assert keys["http.extraHeader"] == header
    assert keys["http.followRedirects"] == "false"
    assert keys["safe.directory"] == "/w"
    assert env["GIT_ALLOW_PROTOCOL"] == "http:https"
    assert "KLOOP_GIT_TOKEN" not in env
    masked = token.mask(f"failed with {header} and s3cret-token")
    assert "s3cret" not in masked and "eC1hY2Nlc3" not in masked
    basic = Settings("http://g/a.git", "main", "b", Path("/w"), username="bot", password="pw")
    assert basic.header() == "Authorization: Basic " + base64.b64encode(b"bot:pw").decode()
    assert Settings("http://g/a.git", "main", "b", Path("/w")).header() is None


def test_the_agents_head_is_read_as_data_from_loose_and_packed_refs(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    (git / "refs" / "heads" / "kloop").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/kloop/x\n")
    assert agent_head(tmp_path) is None
    (git / "packed-refs").write_text(f"# pack-refs\n{SHA} refs/heads/kloop/x\n")
    assert agent_head(tmp_path) == SHA
    (git / "refs" / "heads" / "kloop" / "x").write_text("e" * 40 + "\n")
    assert agent_head(tmp_path) == "e" * 40
    (git / "HEAD").write_text("ref: ../../etc/passwd\n")
    assert agent_head(tmp_path) is None


def test_a_missing_kit_image_is_a_pod_that_cannot_start() -> None:
    pod = {
        "metadata": {"name": "p", "uid": "u"},
        "spec": {"containers": [{"name": "main"}]},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {"name": CLONE_CONTAINER, "state": {"waiting": {"reason": "ErrImageNeverPull"}}}
            ],
            "containerStatuses": [
                {"name": "main", "state": {"waiting": {"reason": "PodInitializing"}}}
            ],
        },
    }
    assert observe_pod(pod).reason == "ErrImageNeverPull"


def test_a_pod_with_git_credentials_never_shares_its_process_namespace() -> None:
    from kloop.adapters.workspace import add_workspace
    from kloop.api.loop import GitWorkspace

    checkout = Checkout("kloop/r1/default-local-i2", "main", push=True)
    pod = {"shareProcessNamespace": True, "containers": [{"name": "agent", "image": "a"}]}
    add_workspace(pod, checkout, GitWorkspace.model_validate(GIT["git"]))
    assert pod["shareProcessNamespace"] is False, "the agent could read the sidecar's env"
    anonymous = {"shareProcessNamespace": True, "containers": [{"name": "agent", "image": "a"}]}
    add_workspace(anonymous, checkout, GitWorkspace(url="http://git.example/app.git"))
    assert anonymous["shareProcessNamespace"] is True, "no credentials: the template decides"
