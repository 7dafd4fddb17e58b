"""Two operators sharded by label (--shard-label) on one cluster never touch each other's runs.

Both serve the same namespace: shard a (``kloop.dev/shard=a``) and shard b (``=b``). Each has a
Loop with a schedule; hand-made runs, a scheduled run and a ``kubectl kloop run`` run land in both
shards, and an unlabelled run belongs to neither. Who drove a run is read from the apiserver: the
field manager of every write (each operator's user agent names its shard), the pods' labels, and
each operator's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.helpers import wait_for
from e2e.loops import GROUP, VERSION, create_loop, get_run, wait_finished
from e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
SHARD = "kloop.dev/shard"
SHARDS = ("a", "b")
ROOT = Path(__file__).resolve().parents[2]
KUBECTL_KLOOP = Path(sys.executable).parent / "kubectl-kloop"
BUSYBOX = "kloop.local/busybox:1.0"
MAKER = (
    """printf '{"v":1,"outcome":"changed","summary":"did %s","tokens":1}' "$KLOOP_RUN" """
    "> /dev/termination-log"
)
PASS = """printf '{"v":1,"verdict":"pass","reasons":["ok"]}' > /dev/termination-log"""


def _container(name: str, script: str) -> Json:
    return {
        "name": name,
        "image": BUSYBOX,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
    }


def sharded_loop(shard: str) -> Json:
    """A Loop of ``shard`` whose runs pass on iteration 1 (maker, checker, teardown), every minute.

    Its templates put the other shard's label on the pods: kloop must overwrite it with the run's.
    """
    other = {SHARD: "b" if shard == "a" else "a"}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Loop",
        "metadata": {"name": f"greet-{shard}", "labels": {SHARD: shard}},
        "spec": {
            "goal": "pass at once",
            "schedule": "* * * * *",
            "concurrencyPolicy": "Allow",  # the unlabelled run never ends: it must not block
            "maker": {
                "timeoutSeconds": 120,
                "template": {
                    "metadata": {"labels": other},
                    "spec": {"containers": [_container("agent", MAKER)]},
                },
            },
            "checkers": [
                {"name": "ok", "template": {"spec": {"containers": [_container("check", PASS)]}}}
            ],
            "budget": {"maxIterations": 1},
            "teardown": {
                "template": {"spec": {"containers": [_container("cleanup", "echo $KLOOP_RUN")]}}
            },
        },
    }


def create_run(
    api: client.ApiClient, namespace: str, name: str, loop: str, shard: str | None
) -> None:
    labels = {SHARD: shard} if shard else {}
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoopRun",
        "metadata": {"name": name, "labels": labels},
        "spec": {"loopRef": {"name": loop}},
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns", body
    )


def list_runs(api: client.ApiClient, namespace: str) -> list[Json]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns"
    )
    items: list[Json] = listed["items"]
    return items


def managers(obj: Json) -> set[str]:
    return {str(m.get("manager")) for m in obj["metadata"].get("managedFields") or []}


def kloop_managers(obj: Json) -> set[str]:
    return {m for m in managers(obj) if m.startswith("kloop-operator")}


def logged_runs(log: Path) -> set[str]:
    """Every run (and pod) name an operator's JSON log mentions in a ``run`` or ``pod`` field."""
    found: set[str] = set()
    for line in log.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        for key in ("run", "pod"):
            if isinstance(doc.get(key), str):
                found.add(doc[key])
    return found


@pytest.fixture
def shard_operators(
    cluster: Path, kloop_crds: list[str], namespace: str, tmp_path: Path
) -> Iterator[dict[str, OperatorProcess]]:
    """One operator per shard, both serving the test's namespace."""
    ops = {
        s: OperatorProcess(
            cluster, tmp_path / f"operator-{s}.log", [namespace], ["--shard-label", f"{SHARD}={s}"]
        )
        for s in SHARDS
    }
    try:
        for op in ops.values():
            op.start()
        yield ops
    finally:
        for s, op in ops.items():
            op.stop()
            print(f"--- operator {s} log (tail) ---\n{op.log_tail(40)}")


def test_two_label_shards_on_one_namespace_drive_only_their_own_runs(
    cluster: Path,
    api_client: client.ApiClient,
    namespace: str,
    shard_operators: dict[str, OperatorProcess],
    tmp_path: Path,
) -> None:
    custom = client.CustomObjectsApi(api_client)
    for s in SHARDS:
        create_loop(api_client, namespace, sharded_loop(s))
        create_run(api_client, namespace, f"hand-{s}", f"greet-{s}", s)
    # a run of shard a's Loop, but labelled b: it is b's to drive (the run's label decides)
    create_run(api_client, namespace, "cross-b", "greet-a", "b")
    # no shard label: neither operator may touch it
    create_run(api_client, namespace, "nobody", "greet-a", None)

    # kubectl kloop run: the CLI knows nothing of shards, the run inherits the Loop's label
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator"), "KUBECONFIG": str(cluster)}
    cli = subprocess.run(
        [str(KUBECTL_KLOOP), "run", "greet-b", "-n", namespace, "--name", "cli-b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr + cli.stdout

    # one scheduled run per Loop (at the next minute boundary), labelled like its Loop
    def scheduled_runs() -> dict[str, Json] | None:
        found = {
            r["spec"]["loopRef"]["name"]: r
            for r in list_runs(api_client, namespace)
            if (r["metadata"].get("annotations") or {}).get("kloop.dev/scheduled-at")
        }
        return found if found.keys() >= {"greet-a", "greet-b"} else None

    scheduled = wait_for("a scheduled run of each Loop", scheduled_runs, timeout=130)
    for s in SHARDS:
        custom.patch_namespaced_custom_object(  # no more scheduled runs
            GROUP, VERSION, namespace, "loops", f"greet-{s}", {"spec": {"suspend": True}}
        )
    owners: dict[str, str] = {}  # run -> the shard that must drive it
    for loop_name, run in scheduled.items():
        loop_shard = loop_name.removeprefix("greet-")
        assert (run["metadata"].get("labels") or {}).get(SHARD) == loop_shard, run["metadata"]
        owners[run["metadata"]["name"]] = loop_shard
    assert get_run(api_client, namespace, "cli-b")["metadata"]["labels"][SHARD] == "b"
    owners.update({"hand-a": "a", "hand-b": "b", "cross-b": "b", "cli-b": "b"})

    for name in owners:
        run = wait_finished(api_client, namespace, name, timeout=150)
        assert run["status"]["phase"] == "Succeeded", (name, run.get("status"))

    core = client.CoreV1Api(api_client)
    pods = core.list_namespaced_pod(namespace).items
    for name, s in owners.items():
        run = get_run(api_client, namespace, name)
        # status was written by the run's shard only (kubectl-kloop may have created it)
        assert kloop_managers(run) == {f"kloop-operator-shard-{s}"}, (name, managers(run))
        mine = [p for p in pods if (p.metadata.labels or {}).get("kloop.dev/run") == name]
        assert len(mine) == 3, (name, [p.metadata.name for p in mine])  # maker, checker, teardown
        for pod in mine:
            assert pod.metadata.labels[SHARD] == s, (pod.metadata.name, pod.metadata.labels)
            creators = {m.manager for m in pod.metadata.managed_fields or []}
            assert f"kloop-operator-shard-{s}" in creators, (pod.metadata.name, creators)
            assert not {c for c in creators if c.startswith("kloop-operator")} - {
                f"kloop-operator-shard-{s}"
            }

    # the unlabelled run: no status, no pods, nothing written by any operator
    time.sleep(2)
    nobody = get_run(api_client, namespace, "nobody")
    status = nobody.get("status") or {}  # the CRD's defaults only (iteration 0)
    assert not status.get("phase") and not status.get("conditions"), status
    assert not kloop_managers(nobody), managers(nobody)
    assert not [p for p in pods if (p.metadata.labels or {}).get("kloop.dev/run") == "nobody"]

    # each Loop's status is kept by its own shard
    for s in SHARDS:
        loop = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "loops", f"greet-{s}")
        assert kloop_managers(loop) == {f"kloop-operator-shard-{s}"}, managers(loop)

    # and each operator's log names only its own shard's runs and pods
    for s, op in shard_operators.items():
        seen = logged_runs(op.log_path)
        theirs = {name for name, owner in owners.items() if owner != s} | {"nobody"}
        ours = {name for name, owner in owners.items() if owner == s}
        assert ours <= seen, (s, ours - seen)
        leaked = {n for n in seen if any(n == t or n.startswith(f"{t}-") for t in theirs)}
        assert not leaked, (s, leaked)
