"""``kubectl kloop`` against the real cluster: every command, through the installed executable.

One namespace and one operator serve the whole module (pods are the slow part): four Loops are
started through ``kubectl kloop run`` at once, and the tests below take them in file order —
``gated`` waits for an approval, ``unsure`` pauses on an inconclusive verdict, ``slow`` is
aborted, ``broken`` fails. Each test waits for the state it needs, with a bound.

The kloop-approvals admission policy is bound to the namespace, and a second user, the
ServiceAccount ``bob`` (may edit LoopRuns but not ``approve``), has a kubeconfig of its own: a
real token, so the apiserver (not impersonation) says who is asking.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e import admission
from e2e.cluster import paths
from e2e.helpers import wait_for
from e2e.loops import GROUP, VERSION, create_loop, get_run, greeting_loop
from e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "kubectl-kloop"
LOOPRUN_EDITOR = [
    {"apiGroups": [GROUP], "resources": ["loopruns"], "verbs": ["get", "list", "patch"]},
    {"apiGroups": [GROUP], "resources": ["loops"], "verbs": ["get", "list"]},
]


def kloop(
    *args: str, kubeconfig: Path, timeout: float = 240, columns: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``kubectl-kloop`` (this checkout's code) with ``KUBECONFIG`` set."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"), "KUBECONFIG": str(kubeconfig)}
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [str(EXE), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


@pytest.fixture(scope="module")
def ns(api_client: client.ApiClient, kloop_crds: list[str]) -> Iterator[str]:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="module")
def admin_config(cluster: Path, ns: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The admin kubeconfig whose context's namespace is ``ns`` (so no -n is needed)."""
    doc = yaml.safe_load(cluster.read_text())
    for ctx in doc["contexts"]:
        ctx["context"]["namespace"] = ns
    path = tmp_path_factory.mktemp("cli") / "admin.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def bob_config(
    api_client: client.ApiClient, cluster: Path, ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig for ServiceAccount bob: may get, list and patch LoopRuns, not approve."""
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "bob"}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": "bob"}, "rules": LOOPRUN_EDITOR})
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "bob"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bob"},
            "subjects": [{"kind": "ServiceAccount", "name": "bob", "namespace": ns}],
        },
    )
    token = core.create_namespaced_service_account_token(
        "bob", ns, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    doc = yaml.safe_load(cluster.read_text())
    doc["users"] = [{"name": "bob", "user": {"token": token}}]
    doc["contexts"] = [
        {"name": "bob", "context": {"cluster": doc["clusters"][0]["name"], "user": "bob"}}
    ]
    doc["current-context"] = "bob"
    path = tmp_path_factory.mktemp("cli") / "bob.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def approvals_bound(api_client: client.ApiClient, ns: str) -> Iterator[None]:
    """The chart's kloop-approvals policy, as a copy of its own bound to ``ns`` only.

    A copy (``kloop-approvals-<ns>``), not the shared ``kloop-approvals``: test_trust_9 replaces
    and deletes that one, and another session on the cluster may be running it meanwhile.
    """
    reg = client.AdmissionregistrationV1Api(api_client)
    chart = next(p for p in admission.policies() if p["metadata"]["name"] == "kloop-approvals")
    name = f"kloop-approvals-{ns}"
    policy = {**chart, "metadata": {**chart["metadata"], "name": name}}
    reg.create_validating_admission_policy(policy)
    reg.create_validating_admission_policy_binding(
        admission.binding(name, policy, None, namespaces=[ns])
    )
    runs = client.CustomObjectsApi(api_client)
    unsigned = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoopRun",
        "metadata": {"name": "probe", "annotations": {"kloop.dev/approve": "s"}},
        "spec": {"loopRef": {"name": "none"}},
    }

    def effective() -> bool:
        try:
            runs.create_namespaced_custom_object(
                GROUP, VERSION, ns, "loopruns", unsigned, dry_run="All"
            )
        except client.ApiException as err:
            return err.status == 403
        return False

    try:
        wait_for("the approvals binding to take effect", effective, timeout=60)
        yield
    finally:
        with contextlib.suppress(client.ApiException):
            reg.delete_validating_admission_policy_binding(name)
        with contextlib.suppress(client.ApiException):
            reg.delete_validating_admission_policy(name)


def _loops() -> list[Json]:
    """Gated (approval, passes on iteration 2), unsure (pauses), slow (to abort), broken."""
    gated = greeting_loop()
    gated["metadata"]["name"] = "gated"
    maker = gated["spec"]["maker"]["template"]["spec"]["containers"][0]
    maker["args"] = [maker["args"][0].replace('2) text="hello wrld" ;;', "")]
    gated["spec"]["stages"] = [{"name": "s", "clusters": ["local"], "requireApproval": True}]

    unsure = greeting_loop()
    unsure["metadata"]["name"] = "unsure"
    check = unsure["spec"]["checkers"][0]["template"]["spec"]["containers"][0]
    check["args"] = [
        'printf \'{"v":1,"verdict":"inconclusive","reasons":["cannot tell"]}\''
        " > /dev/termination-log"
    ]
    del unsure["spec"]["teardown"]

    slow = greeting_loop()
    slow["metadata"]["name"] = "slow"
    slow["spec"]["maker"]["template"]["spec"]["containers"][0]["args"] = ["sleep 120"]

    broken = greeting_loop()
    broken["metadata"]["name"] = "broken"
    broken["spec"]["maker"]["template"]["spec"]["containers"][0]["args"] = [
        "echo 'maker gives up'; exit 3"
    ]
    del broken["spec"]["teardown"]
    return [gated, unsure, slow, broken]


@pytest.fixture(scope="module")
def runs(
    api_client: client.ApiClient,
    cluster: Path,
    ns: str,
    admin_config: Path,
    approvals_bound: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """The operator serving ``ns``, the four Loops, and a run of three started with the CLI.

    ``broken`` is left to ``test_run_wait_exits_with_the_failed_runs_code``.
    """
    log = tmp_path_factory.mktemp("cli") / "operator.log"
    operator = OperatorProcess(cluster, log, [ns], ["--allow-egress-cidr", "127.0.0.0/8"])
    operator.start()
    try:
        for manifest in _loops():
            create_loop(api_client, ns, manifest)
        started: dict[str, str] = {}
        for loop, extra in (
            ("gated", ["--context", "ticket=CLI-1", "-c", "branch=main"]),
            ("unsure", []),
            ("slow", []),
        ):
            result = kloop("run", loop, *extra, kubeconfig=admin_config)
            assert result.returncode == 0, result.stderr
            started[loop] = result.stdout.strip()
        yield started
    finally:
        operator.stop()
        print(f"--- operator log (tail) ---\n{operator.log_tail(60)}")


def _phase(api: client.ApiClient, ns: str, run: str) -> str | None:
    phase: str | None = (get_run(api, ns, run).get("status") or {}).get("phase")
    return phase


def _whoami(api: client.ApiClient) -> str:
    review = client.AuthenticationV1Api(api).create_self_subject_review({})
    return str(review.status.user_info.username)


def test_run_prints_the_new_runs_name_and_creates_it_owned_by_its_loop(
    api_client: client.ApiClient, ns: str, runs: dict[str, str]
) -> None:
    name = runs["gated"]
    assert name.startswith("gated-manual-") and "\n" not in name, name
    run = get_run(api_client, ns, name)
    assert run["spec"]["context"] == {"ticket": "CLI-1", "branch": "main"}
    owner = run["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Loop", "gated")
    assert run["metadata"]["labels"]["kloop.dev/loop"] == "gated"
    assert run["metadata"]["annotations"]["kloop.dev/started-by"] == _whoami(api_client)


def test_run_of_a_missing_loop_says_so_and_exits_3(admin_config: Path, ns: str) -> None:
    result = kloop("run", "nope", kubeconfig=admin_config)
    assert result.returncode == 3, result
    assert result.stderr.strip() == f'error: Loop "nope" not found in namespace "{ns}"'
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["describe", "nope"],
        ["approve", "nope"],
        ["abort", "nope"],
        ["resume", "nope"],
        ["logs", "nope"],
        ["watch", "nope"],
        ["memory", "nope"],
    ],
)
def test_a_missing_run_or_loop_is_reported_with_exit_code_3(
    admin_config: Path, ns: str, args: list[str]
) -> None:
    result = kloop(*args, kubeconfig=admin_config)
    kind = "Loop" if args[0] == "memory" else "LoopRun"
    assert result.returncode == 3, result
    assert f'{kind} "nope" not found in namespace "{ns}"' in result.stderr
    no_traceback(result)


def test_approve_is_refused_for_a_user_without_the_approve_verb(
    api_client: client.ApiClient, ns: str, runs: dict[str, str], bob_config: Path
) -> None:
    name = runs["gated"]
    wait_for(
        "the gated run to await approval",
        lambda: _phase(api_client, ns, name) == "AwaitingApproval",
        timeout=60,
    )
    result = kloop("-n", ns, "approve", name, kubeconfig=bob_config)
    assert result.returncode == 4, result
    assert f"system:serviceaccount:{ns}:bob may not approve LoopRun {ns}/{name}" in result.stderr
    assert "the approve verb" in result.stderr  # the hint
    no_traceback(result)
    run = get_run(api_client, ns, name)
    assert "kloop.dev/approve" not in (run["metadata"].get("annotations") or {})
    assert run["status"]["phase"] == "AwaitingApproval"


def test_approve_records_the_authenticated_user_and_watch_exits_0_on_success(
    api_client: client.ApiClient, ns: str, runs: dict[str, str], admin_config: Path
) -> None:
    name, me = runs["gated"], _whoami(api_client)
    result = kloop("approve", name, kubeconfig=admin_config)
    assert result.returncode == 0, result
    assert result.stdout.strip() == f'approved stage "s" of {name} as {me}'
    watched = kloop("watch", name, "--timeout", "180", kubeconfig=admin_config)
    assert watched.returncode == 0, watched
    lines = watched.stdout.splitlines()
    assert lines[-1].startswith(f"{name} Succeeded"), lines
    assert any("iteration=1" in line for line in lines), lines  # progress, one line per change
    run = get_run(api_client, ns, name)
    assert run["status"]["stages"][0]["approvedBy"] == me
    again = kloop("approve", name, "--stage", "s", kubeconfig=admin_config)
    assert again.returncode == 0 and "already approved by" in again.stdout, again


def test_watch_and_messages_print_whole_lines_whatever_the_width(
    admin_config: Path, runs: dict[str, str]
) -> None:
    name = runs["gated"]  # finished by the test above: watch prints its last state and exits
    watched = kloop("watch", name, kubeconfig=admin_config, columns=90)
    assert watched.returncode == 0, watched
    lines = watched.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith(name) for line in lines), lines
    assert lines[0].endswith("| every stage passed"), lines


def test_describe_shows_the_iteration_history_as_a_table(
    admin_config: Path, runs: dict[str, str]
) -> None:
    name = runs["gated"]
    result = kloop("describe", name, kubeconfig=admin_config)
    assert result.returncode == 0, result
    text = result.stdout
    for expected in (
        "Phase:",
        "Succeeded",
        "200 tokens, $0.0200",
        '"ticket": "CLI-1"',
        "approved by",
        "changed: wrote helo wrld (feedback: none)",
        "greeting: fail — missing letter l in helo",
        "greeting: pass — greeting is right",
        "iterate",
        "succeed",
    ):
        assert expected in text, (expected, text)
    assert text.index("helo wrld") < text.index("greeting is right")  # oldest first
    as_json = json.loads(kloop("describe", name, "-o", "json", kubeconfig=admin_config).stdout)
    assert as_json["kind"] == "LoopRun" and len(as_json["status"]["iterations"]) == 2
    assert "managedFields" not in as_json["metadata"]
    as_yaml = yaml.safe_load(kloop("describe", name, "-o", "yaml", kubeconfig=admin_config).stdout)
    assert as_yaml["status"]["phase"] == "Succeeded"


def test_get_lists_loops_and_runs_in_the_contexts_namespace(
    admin_config: Path, runs: dict[str, str]
) -> None:
    loops = kloop("get", "loops", kubeconfig=admin_config)
    assert loops.returncode == 0, loops
    header, *rows = loops.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "SCHEDULE", "SUSPEND"]
    assert sorted(row.split()[0] for row in rows) == ["broken", "gated", "slow", "unsure"]
    listed = kloop("get", kubeconfig=admin_config)
    assert listed.returncode == 0, listed
    gated = next(line for line in listed.stdout.splitlines() if line.startswith(runs["gated"]))
    assert gated.split()[1:6] == ["gated", "Succeeded", "s", "2", "pass"], gated
    as_json = json.loads(kloop("get", "runs", "-o", "json", kubeconfig=admin_config).stdout)
    assert as_json["kind"] == "List"
    assert {r["metadata"]["name"] for r in as_json["items"]} >= set(runs.values())
    only = yaml.safe_load(
        kloop("get", "runs", "--loop", "slow", "-o", "yaml", kubeconfig=admin_config).stdout
    )
    assert [r["metadata"]["name"] for r in only["items"]] == [runs["slow"]]
    elsewhere = kloop("get", "-n", "default", kubeconfig=admin_config)
    assert elsewhere.returncode == 0 and runs["gated"] not in elsewhere.stdout, elsewhere


def test_logs_prints_each_pod_under_a_header_oldest_first(
    admin_config: Path, runs: dict[str, str]
) -> None:
    name = runs["gated"]
    result = kloop("logs", name, kubeconfig=admin_config)
    assert result.returncode == 0, result
    headers = [line for line in result.stdout.splitlines() if line.startswith("==> ")]
    assert [h.split()[1] for h in headers] == [
        f"{name}-s0-local-i1-maker",
        f"{name}-s0-local-i1-check-greeting",
        f"{name}-s0-local-i2-maker",
        f"{name}-s0-local-i2-check-greeting",
        f"{name}-teardown",
    ], headers
    assert "(maker, iteration 1, stage s, cluster local, Succeeded)" in headers[0]
    assert "iteration 1 on branch" in result.stdout and f"tearing down {name}" in result.stdout
    one = kloop("logs", name, "--iteration", "2", "--role", "maker", kubeconfig=admin_config)
    assert one.returncode == 0, one
    assert [line.split()[1] for line in one.stdout.splitlines() if line.startswith("==> ")] == [
        f"{name}-s0-local-i2-maker"
    ]
    assert "iteration 2 on branch" in one.stdout and "iteration 1 on" not in one.stdout
    none = kloop("logs", name, "--cluster", "elsewhere", kubeconfig=admin_config)
    assert none.returncode == 3 and "no pods of" in none.stderr, none
    bad = kloop("logs", name, "--role", "judge", kubeconfig=admin_config)
    assert bad.returncode == 2, bad


def test_memory_shows_the_markdown_agents_read_and_the_log(
    admin_config: Path, runs: dict[str, str]
) -> None:
    result = kloop("memory", "gated", kubeconfig=admin_config)
    assert result.returncode == 0, result
    assert "missing letter l in helo" in result.stdout, result.stdout
    log = json.loads(kloop("memory", "gated", "-o", "json", kubeconfig=admin_config).stdout)
    assert [(e["run"], e["iteration"]) for e in log["entries"]] == [
        (runs["gated"], 1),
        (runs["gated"], 2),
    ]
    empty = kloop("memory", "broken", kubeconfig=admin_config)  # runs in a later test
    assert empty.returncode == 0 and "has no memory yet" in empty.stderr, empty


def test_resume_continues_a_paused_run_as_the_user_and_refuses_one_without_the_verb(
    api_client: client.ApiClient,
    ns: str,
    runs: dict[str, str],
    admin_config: Path,
    bob_config: Path,
) -> None:
    name = runs["unsure"]
    wait_for("the unsure run to pause", lambda: _phase(api_client, ns, name) == "Paused", 90)
    refused = kloop("-n", ns, "resume", name, kubeconfig=bob_config)
    assert refused.returncode == 4, refused
    assert "may not resume" in refused.stderr
    no_traceback(refused)
    result = kloop("resume", name, kubeconfig=admin_config)
    assert result.returncode == 0, result
    me = _whoami(api_client)
    assert result.stdout.strip() == f"resumed iteration 1 of {name} as {me}"
    watched = kloop("watch", name, "--timeout", "60", kubeconfig=admin_config)
    assert watched.returncode == 0, watched
    cluster = get_run(api_client, ns, name)["status"]["stages"][0]["clusters"][0]
    assert cluster["resumedBy"] == me, cluster
    nothing = kloop("resume", name, kubeconfig=admin_config)
    assert nothing.returncode == 2 and "has no paused iteration" in nothing.stderr, nothing


def test_abort_halts_a_running_run_and_watch_exits_11(
    api_client: client.ApiClient, ns: str, runs: dict[str, str], admin_config: Path
) -> None:
    name = runs["slow"]
    wait_for("the slow run to run", lambda: _phase(api_client, ns, name) == "Running", 60)
    result = kloop("abort", name, kubeconfig=admin_config)
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"abort requested for {name}; its teardown will run"
    watched = kloop("watch", name, "--timeout", "90", kubeconfig=admin_config)
    assert watched.returncode == 11, watched
    status = get_run(api_client, ns, name)["status"]
    assert (status["phase"], status["haltReason"]) == ("Halted", "Aborted"), status
    assert "(requested by " in status["message"], "the run says who asked, not only the tool"
    assert status["teardown"]["state"] == "Succeeded", status["teardown"]
    again = kloop("abort", name, kubeconfig=admin_config)
    assert again.returncode == 0 and "already finished (Halted)" in again.stdout, again


def test_run_wait_exits_with_the_failed_runs_code(
    api_client: client.ApiClient, ns: str, runs: dict[str, str], admin_config: Path
) -> None:
    result = kloop("run", "broken", "--wait", "--name", "broken-1", kubeconfig=admin_config)
    assert result.returncode == 10, result
    assert result.stdout == "broken-1\n"  # the name alone on stdout; progress on stderr
    assert "broken-1: Failed" in result.stderr, result.stderr
    assert _phase(api_client, ns, "broken-1") == "Failed"
    clash = kloop("run", "broken", "--name", "broken-1", kubeconfig=admin_config)
    assert clash.returncode == 1 and "already exists" in clash.stderr, clash


def test_watch_times_out_with_exit_6(
    api_client: client.ApiClient, ns: str, runs: dict[str, str], admin_config: Path
) -> None:
    name = kloop("run", "slow", kubeconfig=admin_config).stdout.strip()
    result = kloop("watch", name, "--timeout", "2", kubeconfig=admin_config)
    assert result.returncode == 6, result
    assert "after 2s" in result.stderr
    assert kloop("abort", name, kubeconfig=admin_config).returncode == 0


def test_kubectl_runs_it_as_a_plugin_and_passes_its_exit_code_on(
    admin_config: Path, runs: dict[str, str]
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "operator"),
        "KUBECONFIG": str(admin_config),
        "PATH": f"{EXE.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(paths.kubectl()), *args], env=env, capture_output=True, text=True, timeout=60
        )

    listed = kubectl("plugin", "list")
    assert str(EXE) in listed.stdout, listed
    loops = kubectl("kloop", "get", "loops")
    assert loops.returncode == 0 and "gated" in loops.stdout, loops
    missing = kubectl("kloop", "describe", "nope")
    assert missing.returncode == 3 and 'LoopRun "nope" not found' in missing.stderr, missing


def test_an_unreachable_cluster_an_unknown_context_and_bad_usage_have_their_codes(
    cluster: Path, admin_config: Path, tmp_path: Path
) -> None:
    doc = yaml.safe_load(cluster.read_text())
    doc["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(yaml.safe_dump(doc))
    unreachable = kloop("get", kubeconfig=dead, timeout=30)
    assert unreachable.returncode == 5, unreachable
    assert "cannot reach the cluster at https://127.0.0.1:1" in unreachable.stderr
    assert "Connection refused" in unreachable.stderr
    no_traceback(unreachable)
    unknown = kloop("--context", "nowhere", "get", kubeconfig=admin_config)
    assert unknown.returncode == 5 and 'context "nowhere" not found' in unknown.stderr, unknown
    missing = kloop("--kubeconfig", str(tmp_path / "none"), "get", kubeconfig=admin_config)
    assert missing.returncode == 5 and "no usable kubeconfig" in missing.stderr, missing
    usage = kloop("get", "pods", kubeconfig=admin_config)
    assert usage.returncode == 2, usage
    pair = kloop("run", "gated", "--context", "no-equals-sign", kubeconfig=admin_config)
    assert pair.returncode == 2 and "--context wants key=value" in pair.stderr, pair
