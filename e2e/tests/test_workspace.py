"""Workspaces as worktrees on the local cluster, with a real git server the pods reach.

The server is the test's ``git http-backend`` shim bound on the pods' bridge address (never
beyond this machine), with receive-pack enabled and HTTP basic credentials required. Makers and
checkers run the kit image; kloop's clone init container and push sidecar do the git work, and
the credentials reach only them, from a Secret.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster import pki
from e2e.cluster.kit import kit_image
from e2e.fleet import TargetCluster, grant_agent, registered
from e2e.gitops.git_server import GitServer, git_server
from e2e.gitops.workdir import run_git
from e2e.loops import GROUP, VERSION, create_loop, events_for, run_pods, wait_finished
from e2e.operator_process import OperatorProcess, RunningOperator

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
USER, PASSWORD = "kloop-bot", "e2e-Pa55-" + uuid.uuid4().hex[:8]
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRET = "git-creds"

# commits one new file per iteration, and leaves a file it never commits
MAKER = """
set -e
cd "$KLOOP_WORKSPACE"
test -e README
echo "step $KLOOP_ITERATION on $KLOOP_CLUSTER" > "step-$KLOOP_ITERATION.txt"
echo "$KLOOP_CLUSTER" > target.txt
git add "step-$KLOOP_ITERATION.txt" target.txt
git commit -qm "step $KLOOP_ITERATION"
echo draft > uncommitted.txt
kloop-agent report maker --outcome changed --summary "$(ls | tr '\\n' ' ')"
"""

# fails on the maker's uncommitted file, on a writable checkout, and until two steps are in
CHECKER = """
verdict() { kloop-agent report checker --verdict "$1" --reason "$2" --reason "head=$head"; exit 0; }
cd "$KLOOP_WORKSPACE" || { head=none; verdict fail "no workspace"; }
head=$(git rev-parse HEAD)
touch probe 2>/dev/null && verdict fail "the checkout is writable"
[ -e uncommitted.txt ] && verdict fail "graded uncommitted.txt, which the maker never committed"
[ "$(cat target.txt)" = "$KLOOP_CLUSTER" ] || verdict fail "target.txt is not $KLOOP_CLUSTER"
n=$(ls step-*.txt | wc -l | tr -d " ")
[ "$n" -ge "${STEPS:-2}" ] || verdict fail "$n step(s) committed"
verdict pass "$n step(s) committed"
"""

# says "changed" without committing, unless the feedback told it that nothing was pushed
FORGETFUL = """
set -e
cd "$KLOOP_WORKSPACE"
echo work > work.txt
if grep -q "pushed no new commit" "$KLOOP_FEEDBACK"; then
  git add work.txt && git commit -qm work
  kloop-agent report maker --outcome changed --summary "told: nothing was pushed; committed now"
else
  kloop-agent report maker --outcome changed --summary "wrote work.txt"
fi
"""

HAS_WORK = """
if [ -e "$KLOOP_WORKSPACE/work.txt" ]; then
  kloop-agent report checker --verdict pass --reason "work.txt committed"
else
  kloop-agent report checker --verdict fail --reason "no work.txt in the pushed commit"
fi
"""


def _kit(script: str, **env: str) -> Json:
    container: Json = {
        "name": "agent",
        "image": kit_image(),
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }
    return {"spec": {"containers": [container]}}


def workspace_loop(
    name: str,
    url: str,
    maker: str = MAKER,
    checker: str = CHECKER,
    max_iterations: int = 3,
    stages: list[Json] | None = None,
    steps: int = 2,
) -> Json:
    spec: Json = {
        "goal": "commit one step per iteration",
        "maker": {"timeoutSeconds": 120, "template": _kit(maker)},
        "checkers": [
            {"name": "committed", "kind": "pod", "template": _kit(checker, STEPS=str(steps))}
        ],
        "budget": {"maxIterations": max_iterations},
        "workspace": {
            "git": {"url": url, "ref": "main", "secretRef": {"name": SECRET}, "push": True}
        },
    }
    if stages:
        spec["stages"] = stages
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Loop",
        "metadata": {"name": name},
        "spec": spec,
    }


def _git(cwd: Path, *args: str) -> str:
    auth = ["-c", f"http.extraHeader=Authorization: Basic {BASIC}"]
    ident = ["-c", "user.name=e2e", "-c", "user.email=e2e@kloop.invalid"]
    return run_git(*auth, *ident, *args, cwd=cwd).strip()


def _heads(url: str, tmp: Path) -> dict[str, str]:
    out = _git(tmp, "ls-remote", url)
    return {
        ref.removeprefix("refs/heads/"): sha
        for sha, ref in (line.split() for line in out.splitlines())
    }


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[GitServer, str, str]]:
    """A password-protected repository on the bridge with README on main: (server, url, sha)."""
    with git_server(tmp_path / "srv", host=pki.NODE_IP, auth=(USER, PASSWORD)) as server:
        url = server.create_repo("app")
        seed = tmp_path / "seed"
        subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
        (seed / "README").write_text("the app\n")
        _git(seed, "add", "-A")
        _git(seed, "commit", "-qm", "seed")
        _git(seed, "push", "-q", url, "main")
        yield server, url, _git(seed, "rev-parse", "HEAD")


@pytest.fixture
def git_secret(api_client: client.ApiClient, namespace: str) -> str:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=SECRET),
        string_data={"username": USER, "password": PASSWORD},
    )
    client.CoreV1Api(api_client).create_namespaced_secret(namespace, body)
    return SECRET


def _start(api: client.ApiClient, namespace: str, loop: str, run: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoopRun",
        "metadata": {"name": run},
        "spec": {"loopRef": {"name": loop}},
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns", body
    )


def _assert_no_secret(
    api: client.ApiClient, namespace: str, run: Json, operator: RunningOperator
) -> None:
    """The password (or its header) is nowhere: status, Events, pod specs, any container's log."""
    core = client.CoreV1Api(api)
    name = run["metadata"]["name"]
    texts = [json.dumps(run), operator.log_tail(100000)]
    texts += [e.message or "" for e in events_for(api, namespace, name)]
    for pod in run_pods(api, namespace, name):
        texts.append(json.dumps(api.sanitize_for_serialization(pod)))
        for container in [*(pod.spec.init_containers or []), *pod.spec.containers]:
            texts.append(
                core.read_namespaced_pod_log(pod.metadata.name, namespace, container=container.name)
            )
    for text in texts:
        assert PASSWORD not in text and BASIC not in text


def _reasons(record: Json) -> list[str]:
    return [r for c in record["checkers"] for r in c["reasons"]]


def test_iterations_accumulate_on_their_branches_and_checkers_grade_the_pushed_commit(
    api_client: client.ApiClient,
    namespace: str,
    operator: RunningOperator,
    repo: tuple[GitServer, str, str],
    git_secret: str,
    tmp_path: Path,
) -> None:
    server, url, main = repo
    create_loop(api_client, namespace, workspace_loop("steps", url))
    _start(api_client, namespace, "steps", "ws-1")
    run = wait_finished(api_client, namespace, "ws-1", timeout=240)
    status = run["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    first, second = status["iterations"]
    heads = _heads(url, tmp_path)
    one, two = "kloop/ws-1/default-local-i1", "kloop/ws-1/default-local-i2"
    assert first["workspace"] == {
        "branch": one,
        "startedFrom": "main",
        "base": main,
        "commit": heads[one],
    }
    assert second["workspace"] == {
        "branch": two,
        "startedFrom": one,
        "base": heads[one],
        "commit": heads[two],
    }, "iteration 2 started from iteration 1's pushed commit"
    assert first["checkers"][0]["verdict"] == "fail"
    assert "1 step(s) committed" in _reasons(first)
    assert f"head={heads[one]}" in _reasons(first), "the checker graded iteration 1's commit"
    assert second["checkers"][0]["verdict"] == "pass"
    assert f"head={heads[two]}" in _reasons(second), "the checker graded exactly the push"
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", url, str(clone))
    assert _git(clone, "rev-parse", f"{heads[two]}^") == heads[one], "work accumulated"
    files = _git(clone, "ls-tree", "--name-only", heads[two]).split()
    assert sorted(files) == ["README", "step-1.txt", "step-2.txt", "target.txt"]
    assert heads["main"] == main, "main is untouched"
    assert server.app.seen and set(server.app.seen) == {f"Basic {BASIC}"}
    _assert_no_secret(api_client, namespace, run, operator)


def test_a_maker_that_says_changed_but_committed_nothing_is_told_so(
    api_client: client.ApiClient,
    namespace: str,
    operator: RunningOperator,
    repo: tuple[GitServer, str, str],
    git_secret: str,
) -> None:
    _, url, main = repo
    loop = workspace_loop("forgetful", url, maker=FORGETFUL, checker=HAS_WORK)
    create_loop(api_client, namespace, loop)
    _start(api_client, namespace, "forgetful", "ws-2")
    status = wait_finished(api_client, namespace, "ws-2", timeout=240)["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    first, second = status["iterations"]
    assert first["workspace"]["commit"] == main
    assert "pushed no new commit" in first["workspace"]["note"]
    assert first["checkers"][0]["reasons"] == ["no work.txt in the pushed commit"]
    assert second["maker"]["summary"] == "told: nothing was pushed; committed now"
    assert second["workspace"]["commit"] != main
    reasons = {e.reason for e in events_for(api_client, namespace, "ws-2")}
    assert "NoNewCommit" in reasons


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind((pki.NODE_IP, 0))
        port: int = s.getsockname()[1]
    return port


def test_a_conflicting_push_and_an_unreachable_remote_are_clear_errors(
    api_client: client.ApiClient,
    namespace: str,
    operator: RunningOperator,
    repo: tuple[GitServer, str, str],
    git_secret: str,
    tmp_path: Path,
) -> None:
    _, url, _ = repo
    # somebody else's history already on the branch kloop will push to
    other = tmp_path / "other"
    subprocess.run(["git", "init", "-q", "-b", "x", str(other)], check=True)
    _git(other, "commit", "-q", "--allow-empty", "-m", "unrelated")
    taken = _git(other, "rev-parse", "HEAD")
    _git(other, "push", "-q", url, "x:refs/heads/kloop/ws-3/default-local-i1")
    create_loop(api_client, namespace, workspace_loop("conflict", url))
    _start(api_client, namespace, "conflict", "ws-3")
    unreachable = f"http://{pki.NODE_IP}:{_closed_port()}/app.git"
    create_loop(api_client, namespace, workspace_loop("nowhere", unreachable))
    _start(api_client, namespace, "nowhere", "ws-4")

    conflict = wait_finished(api_client, namespace, "ws-3", timeout=180)["status"]
    assert (conflict["phase"], conflict["haltReason"]) == ("Failed", "PushRejected"), json.dumps(
        conflict["iterations"], indent=1
    )
    maker = conflict["iterations"][0]["maker"]
    assert (maker["outcome"], maker["errorReason"]) == ("error", "PushRejected")
    assert "rejected" in maker["summary"]
    assert _heads(url, tmp_path)["kloop/ws-3/default-local-i1"] == taken, "never forced"
    assert "PushRejected" in {e.reason for e in events_for(api_client, namespace, "ws-3")}

    nowhere = wait_finished(api_client, namespace, "ws-4", timeout=180)["status"]
    assert (nowhere["phase"], nowhere["haltReason"]) == ("Failed", "GitRemoteUnavailable")
    assert "workspace checkout failed" in nowhere["iterations"][0]["maker"]["summary"]
    assert not nowhere["iterations"][0].get("checkers"), "nothing was graded"
    pods = [p.metadata.name for p in run_pods(api_client, namespace, "ws-4")]
    assert not [p for p in pods if "-check-" in p], "no checker pod was created"
    assert "GitRemoteUnavailable" in {e.reason for e in events_for(api_client, namespace, "ws-4")}


AGENTS, AGENT = "kloop-agents", "agent"


@pytest.fixture
def fleet_operator(
    fleet: dict[str, TargetCluster],
    cluster: Path,
    kloop_crds: list[str],
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """fleet-a and fleet-b registered for this namespace, and an operator serving it."""
    core = client.CoreV1Api(api_client)
    for name in ("fleet-a", "fleet-b"):
        grant_agent(fleet[name], AGENTS, AGENT, "fleet-demo")
        secret = registered(
            fleet[name],
            namespace,
            **{
                "kloop.dev/allowed-namespaces": namespace,
                "kloop.dev/agent-service-account": f"{AGENTS}/{AGENT}",
            },
        )
        core.create_namespaced_secret(namespace, secret)
    operator = OperatorProcess(
        cluster, tmp_path / "operator.log", [namespace], env={"KLOOP_OPERATOR_NAMESPACE": namespace}
    )
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
        print(f"--- operator log (tail) ---\n{operator.log_tail(60)}")


def test_two_targets_of_a_stage_push_to_their_own_branches_without_conflict(
    api_client: client.ApiClient,
    namespace: str,
    fleet_operator: OperatorProcess,
    repo: tuple[GitServer, str, str],
    git_secret: str,
    tmp_path: Path,
) -> None:
    _, url, main = repo
    stages = [{"name": "prod", "clusters": ["fleet-a", "fleet-b"]}]
    create_loop(api_client, namespace, workspace_loop("fleet", url, stages=stages, steps=1))
    _start(api_client, namespace, "fleet", "ws-5")
    status = wait_finished(api_client, namespace, "ws-5", timeout=240)["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    heads = _heads(url, tmp_path)
    branches = {r["cluster"]: r["workspace"] for r in status["iterations"]}
    assert {c: w["branch"] for c, w in branches.items()} == {
        "fleet-a": "kloop/ws-5/prod-fleet-a-i1",
        "fleet-b": "kloop/ws-5/prod-fleet-b-i2",
    }
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", url, str(clone))
    for cluster, workspace in branches.items():
        assert workspace["base"] == main and workspace["startedFrom"] == "main"
        assert heads[workspace["branch"]] == workspace["commit"]
        # both changed the same line of the same file: only separate branches keep both
        assert _git(clone, "show", f"{workspace['commit']}:target.txt") == cluster
    assert branches["fleet-a"]["commit"] != branches["fleet-b"]["commit"]
