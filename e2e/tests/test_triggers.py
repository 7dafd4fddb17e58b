"""Release triggers on the local cluster: webhooks and polling a git repository.

The webhook receiver is a real operator process with ``--webhook-port``; the repository is served
by ``git http-backend`` on loopback (``--allow-egress-cidr 127.0.0.0/8`` lets the poller reach it).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from e2e.gitops.git_server import GitServer, git_server
from e2e.gitops.workdir import run_git
from e2e.helpers import wait_for
from e2e.loops import GROUP, VERSION, create_loop, events_for, greeting_loop
from e2e.operator_process import OperatorProcess
from e2e.procs import free_port
from kloop.core.webhooks import sign

pytestmark = pytest.mark.e2e

TOKEN = "e2e-webhook-token-" + uuid.uuid4().hex
GIT_PASSWORD = "e2e-git-password-" + uuid.uuid4().hex


class Receiver:
    """The operator process with its webhook port."""

    def __init__(self, proc: OperatorProcess, port: int) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.port = port


@pytest.fixture
def receiver(
    cluster: Path, kloop_crds: list[str], namespace: str, tmp_path: Path
) -> Iterator[Receiver]:
    port = free_port()
    proc = OperatorProcess(
        cluster,
        tmp_path / "operator.log",
        [namespace],
        ["--allow-egress-cidr", "127.0.0.0/8", "--webhook-port", str(port)],
    )
    proc.start()
    try:
        yield Receiver(proc, port)
    finally:
        proc.stop()
        log = proc.log_path.read_text(errors="replace")
        print(f"--- operator log (tail) ---\n{proc.log_tail(60)}")
        assert TOKEN not in log and GIT_PASSWORD not in log, "a secret reached the log"


def put_secret(api: client.ApiClient, namespace: str, name: str, data: dict[str, str]) -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), data=encoded)
    )


def trigger_loop(triggers: list[dict[str, Any]], policy: str = "Allow") -> dict[str, Any]:
    """The greeting loop, one iteration per run (runs are cheap), with these triggers."""
    loop = greeting_loop()
    loop["spec"]["budget"] = {"maxIterations": 1}
    loop["spec"].pop("teardown", None)
    loop["spec"]["concurrencyPolicy"] = policy
    loop["spec"]["triggers"] = triggers
    return loop


def loop_status(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    loop = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "loops", "greeting"
    )
    status: dict[str, Any] = loop.get("status") or {}
    return status


def trigger_status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    for entry in loop_status(api, namespace).get("triggers") or []:
        if entry["name"] == name:
            found: dict[str, Any] = entry
            return found
    return {}


def runs(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns"
    )
    items: list[dict[str, Any]] = listed["items"]
    return items


def github_tag_push(tag: str, ref: str | None = None) -> bytes:
    return json.dumps(
        {
            "ref": ref or f"refs/tags/{tag}",
            "after": "1" * 40,
            "deleted": False,
            "head_commit": {"id": "c0ffee" + "0" * 34},
            "repository": {"full_name": "acme/app"},
            "pusher": {"name": "alice"},
        }
    ).encode()


def deliver(
    url: str, body: bytes, delivery: str, token: str | None = TOKEN, **headers: str
) -> httpx.Response:
    sent = {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, **headers}
    if token is not None:
        sent["X-Hub-Signature-256"] = sign(token, body)
    return httpx.post(url, content=body, headers=sent, timeout=30)


def webhook_url(api: client.ApiClient, namespace: str, receiver: Receiver) -> str:
    path = wait_for(
        "the trigger's webhookPath in status",
        lambda: trigger_status(api, namespace, "release").get("webhookPath"),
        timeout=60,
    )
    return receiver.base + path


@pytest.fixture
def github_trigger(
    api_client: client.ApiClient, namespace: str, receiver: Receiver
) -> Iterator[str]:
    """A Loop with a GitHub webhook trigger for tags v*; yields its receiver URL."""
    put_secret(api_client, namespace, "hook", {"token": TOKEN})
    webhook = {"provider": "github", "secretRef": {"name": "hook"}}
    create_loop(
        api_client,
        namespace,
        trigger_loop([{"name": "release", "tagPattern": "v*", "webhook": webhook}]),
    )
    yield webhook_url(api_client, namespace, receiver)


def test_a_signed_github_tag_event_starts_exactly_one_run_with_the_tag_in_its_context(
    api_client: client.ApiClient, namespace: str, github_trigger: str
) -> None:
    delivery = str(uuid.uuid4())
    answer = deliver(github_trigger, github_tag_push("v1.2.0"), delivery)
    assert answer.status_code == 202, answer.text
    (run,) = runs(api_client, namespace)
    assert answer.json()["run"] == run["metadata"]["name"]
    assert run["spec"]["context"] == {
        "trigger": "release",
        "repository": "acme/app",
        "tag": "v1.2.0",
        "commit": "c0ffee" + "0" * 34,
        "pushedBy": "alice",
    }
    assert run["metadata"]["ownerReferences"][0]["name"] == "greeting"
    # the same delivery again, and a new delivery of the same tag: refused, nothing created
    replay = deliver(github_trigger, github_tag_push("v1.2.0"), delivery)
    assert replay.status_code == 409, replay.text
    again = deliver(github_trigger, github_tag_push("v1.2.0"), str(uuid.uuid4()))
    assert again.status_code == 409, again.text
    assert len(runs(api_client, namespace)) == 1
    status = trigger_status(api_client, namespace, "release")
    assert status["lastTag"] == "v1.2.0" and status["recentTags"] == ["v1.2.0"]
    reasons = {e.reason for e in events_for(api_client, namespace, "greeting")}
    assert {"RunStarted", "WebhookAccepted", "WebhookRefused"} <= reasons, reasons


def _raw(port: int, request: bytes) -> int:
    """Send a raw HTTP request; the status code of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        return int(s.recv(4096).split(b" ", 2)[1])


def test_each_bad_request_kind_gets_its_status_code_and_starts_no_run(
    api_client: client.ApiClient, namespace: str, github_trigger: str, receiver: Receiver
) -> None:
    body = github_tag_push("v2.0.0")
    cases = {
        "unsigned": deliver(github_trigger, body, "d-1", token=None).status_code,
        "wrongly signed": deliver(github_trigger, body, "d-2", token="not-the-token").status_code,
        "malformed": deliver(github_trigger, b"{not json", "d-3").status_code,
        "unknown path": deliver(receiver.base + "/hook/" + "0" * 64, body, "d-4").status_code,
        "not POST": httpx.get(github_trigger, timeout=10).status_code,
        "branch push": deliver(
            github_trigger, github_tag_push("", "refs/heads/main"), "d-5"
        ).status_code,
        "branch push replayed": deliver(
            github_trigger, github_tag_push("", "refs/heads/main"), "d-5"
        ).status_code,
        "tag not matching": deliver(github_trigger, github_tag_push("nightly"), "d-6").status_code,
    }
    # 2 MiB announced, a few bytes sent: refused before the body is read
    path = github_trigger.removeprefix(receiver.base)
    cases["oversized"] = _raw(
        receiver.port,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n".encode() + body,
    )
    assert cases == {
        "unsigned": 401,
        "wrongly signed": 403,
        "malformed": 400,
        "unknown path": 404,
        "not POST": 405,
        "branch push": 200,
        "branch push replayed": 409,
        "tag not matching": 200,
        "oversized": 413,
    }
    assert runs(api_client, namespace) == []
    # a signed but malformed delivery is told on the Loop; unsigned ones are not (floods)
    refused = [e.message for e in events_for(api_client, namespace, "greeting")]
    assert any("malformed" in m for m in refused), refused


def test_a_burst_of_bad_requests_does_not_stop_good_ones(
    api_client: client.ApiClient, namespace: str, github_trigger: str
) -> None:
    burst = subprocess.Popen(
        [sys.executable, "-m", "e2e.burst", "--url", github_trigger, "--count", "2000"]
        + ["--seconds", "10"],
        stdout=subprocess.PIPE,
    )
    served: list[tuple[float, float, int]] = []  # (sent at, latency, status)
    try:
        for tag in ("v3.0.0", "v3.1.0", "v3.2.0"):
            time.sleep(2.5)  # 2.5, 5 and 7.5 s into the 10 s burst
            sent_at = time.time()
            answer = deliver(github_trigger, github_tag_push(tag), str(uuid.uuid4()))
            served.append((sent_at, time.time() - sent_at, answer.status_code))
        out, _ = burst.communicate(timeout=40)
    finally:
        if burst.poll() is None:
            burst.kill()
    summary = json.loads(out)
    print(f"good deliveries (sent at, latency, status): {served}; burst: {summary}")
    statuses = summary["statuses"]
    # the burst never outlasts its 10 s: on a loaded machine its last few slots may not fit
    assert summary["sent"] >= 1950, summary
    assert sum(statuses.get(code, 0) for code in ("401", "403", "404", "413")) >= 1900, statuses
    for sent_at, latency, status in served:
        assert summary["started"] < sent_at and sent_at + latency < summary["ended"], (
            "each good delivery was served while the burst ran"
        )
        assert status == 202
        assert latency < 3.0
    tags = sorted(r["spec"]["context"]["tag"] for r in runs(api_client, namespace))
    assert tags == ["v3.0.0", "v3.1.0", "v3.2.0"]


@pytest.fixture
def git() -> Iterator[GitServer]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kloop-git-") as root, git_server(Path(root)) as srv:
        yield srv


def _git(work: Path, *args: str) -> None:
    run_git("-c", "user.name=e2e", "-c", "user.email=e2e@kloop.local", *args, cwd=work)


def test_polling_a_git_repository_starts_one_run_per_new_matching_tag(
    api_client: client.ApiClient,
    namespace: str,
    receiver: Receiver,
    git: GitServer,
    tmp_path: Path,
) -> None:
    url = git.create_repo("app")
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    _git(work, "commit", "-q", "--allow-empty", "-m", "first")
    _git(work, "tag", "v1.0.0")
    _git(work, "push", "-q", url, "main", "--tags")
    put_secret(api_client, namespace, "git", {"username": "kloop", "password": GIT_PASSWORD})
    trigger = {
        "name": "release",
        "tagPattern": ">=1.0.0",
        "git": {"url": url, "secretRef": {"name": "git"}, "interval": "10s"},
    }
    create_loop(api_client, namespace, trigger_loop([trigger]))
    # the first poll records the newest tag as the baseline and starts nothing
    first = wait_for(
        "the first poll",
        lambda: trigger_status(api_client, namespace, "release").get("lastPolled"),
        timeout=60,
    )
    assert trigger_status(api_client, namespace, "release")["lastTag"] == "v1.0.0"
    assert runs(api_client, namespace) == []
    # two new release tags (pushed out of order) and one that is no version
    _git(work, "commit", "-q", "--allow-empty", "-m", "second")
    _git(work, "tag", "-a", "v1.10.0", "-m", "annotated")
    _git(work, "tag", "v1.2.0")
    _git(work, "tag", "nightly-2")
    _git(work, "push", "-q", url, "main", "--tags")
    wait_for(
        "a poll after the push",
        lambda: trigger_status(api_client, namespace, "release").get("lastPolled") != first,
        timeout=60,
    )
    status = trigger_status(api_client, namespace, "release")
    assert status["lastTag"] == "v1.10.0", status
    assert status["recentTags"] == ["v1.2.0", "v1.10.0"], "tag order, not push order"
    started = sorted(
        (r["spec"]["context"]["tag"], r["spec"]["context"]["commit"])
        for r in runs(api_client, namespace)
    )
    head = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert started == [("v1.10.0", head), ("v1.2.0", head)], "the annotated tag maps to its commit"
    # the next poll finds nothing new
    second = trigger_status(api_client, namespace, "release")["lastPolled"]
    wait_for(
        "one more poll",
        lambda: trigger_status(api_client, namespace, "release").get("lastPolled") != second,
        timeout=60,
    )
    assert len(runs(api_client, namespace)) == 2
    assert "message" not in trigger_status(api_client, namespace, "release")
