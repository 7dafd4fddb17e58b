"""``kloop-agent workspace clone|push`` against a real git server on loopback, without a cluster.

The e2e test (e2e/tests/test_workspace.py) runs the same commands in pods; these check what is
awkward there: credentials reach the server only as a header and never a message, the push waits
for SIGTERM, ignores the agent's hooks and URL rewrites, and a moved branch is still checked out at
the exact commit.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from e2e.gitops.git_server import GitHttpApp, GitServer, git_server

from kloop.api.gitreport import GitError
from kloop.cli.workspace import Settings, clone, push
from kloop.kit.inputs import workspace_diff

pytestmark = pytest.mark.integration

USER, PASSWORD = "kloop-bot", "s3cret-Pa55"


def _git(cwd: Path, *args: str) -> str:
    ident = ["-c", "user.name=t", "-c", "user.email=t@kloop.invalid"]
    proc = subprocess.run(["git", *ident, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _remote_head(url: str, branch: str) -> str | None:
    auth = f"http.extraHeader=Authorization: Basic {_basic()}"
    out = subprocess.run(
        ["git", "-c", auth, "ls-remote", url, f"refs/heads/{branch}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] if out else None


def _basic() -> str:
    return base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[GitServer, str]]:
    """A password-protected repository with one commit on main (README)."""
    with git_server(tmp_path / "srv", auth=(USER, PASSWORD)) as srv:
        url = srv.create_repo("app")
        seed = tmp_path / "seed"
        subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
        (seed / "README").write_text("hello\n")
        _git(seed, "add", "-A")
        _git(seed, "commit", "-qm", "seed")
        _git(
            seed,
            "-c",
            f"http.extraHeader=Authorization: Basic {_basic()}",
            "push",
            "-q",
            url,
            "main",
        )
        yield srv, url


def _settings(
    url: str, ws: Path, branch: str, start: str = "main", commit: str | None = None
) -> Settings:
    ws.mkdir(parents=True, exist_ok=True)
    return Settings(url, start, branch, ws, commit, username=USER, password=PASSWORD)


def test_clone_commit_push_then_the_next_clone_continues_from_the_pushed_commit(
    server: tuple[GitServer, str], tmp_path: Path
) -> None:
    srv, url = server
    first = _settings(url, tmp_path / "ws1", "kloop/r/default-local-i1")
    cloned = clone(first)
    assert cloned.error is None, cloned.message
    assert _git(first.workspace, "branch", "--show-current") == "kloop/r/default-local-i1"
    assert PASSWORD not in (first.workspace / ".git" / "config").read_text()
    (first.workspace / "work.txt").write_text("done\n")
    _git(first.workspace, "add", "work.txt")
    _git(first.workspace, "commit", "-qm", "work")  # the clone set an identity: commit works
    (first.workspace / "scratch.txt").write_text("not committed\n")
    pushed = push(first)
    assert pushed.error is None, pushed.message
    assert pushed.commit == _git(first.workspace, "rev-parse", "HEAD") != cloned.commit
    assert _remote_head(url, "kloop/r/default-local-i1") == pushed.commit
    assert all(h.startswith("Basic ") for h in srv.app.seen), "every request carried the header"

    second = _settings(
        url,
        tmp_path / "ws2",
        "kloop/r/default-local-i2",
        "kloop/r/default-local-i1",
        commit=pushed.commit,
    )
    assert clone(second).commit == pushed.commit
    assert sorted(p.name for p in second.workspace.iterdir()) == [".git", "README", "work.txt"]


def test_a_moved_branch_is_still_checked_out_at_the_exact_commit(
    server: tuple[GitServer, str], tmp_path: Path
) -> None:
    _, url = server
    first = _settings(url, tmp_path / "ws1", "kloop/r/x-i1")
    base = clone(first).commit
    (first.workspace / "a").write_text("a")
    _git(first.workspace, "add", "a")
    _git(first.workspace, "commit", "-qm", "a")
    assert push(first).error is None
    # the branch's tip is newer than the commit asked for: that commit is fetched by itself
    checker = _settings(url, tmp_path / "ws2", "b", "kloop/r/x-i1", commit=base)
    assert clone(checker).commit == base
    assert not (checker.workspace / "a").exists()


def test_a_checker_can_diff_the_pushed_commit_against_the_makers_start(
    server: tuple[GitServer, str], tmp_path: Path
) -> None:
    _, url = server
    maker = _settings(url, tmp_path / "maker", "kloop/r/d-i1")
    base = clone(maker).commit
    assert base is not None
    for name in ("one", "two"):  # two commits: the base is not even the pushed commit's parent
        (maker.workspace / name).write_text(f"{name}\n")
        _git(maker.workspace, "add", name)
        _git(maker.workspace, "commit", "-qm", name)
    pushed = push(maker).commit
    checker = replace(
        _settings(url, tmp_path / "checker", "kloop/r/d-i1", "kloop/r/d-i1", commit=pushed),
        base=base,
    )
    assert clone(checker).commit == pushed
    diff = workspace_diff(checker.workspace, base)
    assert "+one" in diff and "+two" in diff, diff
    assert "README" not in diff, "only the maker's work"


def test_wrong_credentials_and_a_closed_port_are_an_unreachable_remote_without_the_secret(
    server: tuple[GitServer, str], tmp_path: Path
) -> None:
    _, url = server
    wrong = Settings(url, "main", "b", tmp_path / "w1", username=USER, password="nope-wrong-pw")
    wrong.workspace.mkdir()
    report = clone(wrong)
    assert report.error is GitError.REMOTE_UNAVAILABLE, report.message
    assert "nope-wrong-pw" not in report.message
    closed = _settings("http://127.0.0.1:9/app.git", tmp_path / "w2", "b")
    report = clone(closed)
    assert report.error is GitError.REMOTE_UNAVAILABLE
    assert PASSWORD not in report.message
    missing = _settings(url, tmp_path / "w3", "b", "no-such-branch")
    assert clone(missing).error is GitError.CHECKOUT_FAILED


def test_a_push_onto_a_branch_that_moved_elsewhere_is_rejected_not_forced(
    server: tuple[GitServer, str], tmp_path: Path
) -> None:
    _, url = server
    one = _settings(url, tmp_path / "ws1", "kloop/r/same-i1")
    two = _settings(url, tmp_path / "ws2", "kloop/r/same-i1")
    for settings, name in ((one, "one"), (two, "two")):
        assert clone(settings).error is None
        (settings.workspace / name).write_text(name)
        _git(settings.workspace, "add", name)
        _git(settings.workspace, "commit", "-qm", name)
    kept = push(one).commit
    report = push(two)
    assert report.error is GitError.PUSH_REJECTED, report.message
    assert _remote_head(url, "kloop/r/same-i1") == kept


def test_a_push_the_server_refuses_says_why_not_how_far_it_got(
    server: tuple[GitServer, str], tmp_path: Path
) -> None:
    srv, url = server
    hook = srv.root / "app.git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'branches need a ticket'\nexit 1\n")
    hook.chmod(0o755)
    settings = _settings(url, tmp_path / "ws", "kloop/r/hook-i1")
    assert clone(settings).error is None
    (settings.workspace / "work.txt").write_text("done\n")
    _git(settings.workspace, "add", "work.txt")
    _git(settings.workspace, "commit", "-qm", "work")
    report = push(settings)
    assert report.error is GitError.PUSH_REJECTED, report.message
    assert "pre-receive hook declined" in report.message
    assert "branches need a ticket" in report.message
    assert "POST git-receive-pack" not in report.message
    assert "Writing objects" not in report.message


def test_the_push_ignores_the_agents_hooks_and_url_rewrites(
    server: tuple[GitServer, str], tmp_path: Path
) -> None:
    _, url = server
    settings = _settings(url, tmp_path / "ws", "kloop/r/hooks-i1")
    assert clone(settings).error is None
    ws = settings.workspace
    stolen = tmp_path / "stolen"
    hook = ws / ".git" / "hooks" / "pre-push"
    hook.write_text(f"#!/bin/sh\nenv > {stolen}\n")
    hook.chmod(0o755)
    _git(ws, "config", "url.http://127.0.0.1:9/.insteadOf", url)
    _git(ws, "commit", "-q", "--allow-empty", "-m", "empty")
    report = push(settings)
    assert report.error is None, report.message
    assert not stolen.exists(), "the agent's hook never ran with the credentials"
    assert _remote_head(url, "kloop/r/hooks-i1") == report.commit


def test_the_push_command_waits_for_sigterm_then_writes_its_report(
    server: tuple[GitServer, str], tmp_path: Path
) -> None:
    _, url = server
    settings = _settings(url, tmp_path / "ws", "kloop/r/sig-i1")
    assert clone(settings).error is None
    result = tmp_path / "termination-log"
    env = {
        **os.environ,
        "KLOOP_GIT_URL": url,
        "KLOOP_BRANCH": settings.branch,
        "KLOOP_WORKSPACE": str(settings.workspace),
        "KLOOP_GIT_USERNAME": USER,
        "KLOOP_GIT_PASSWORD": PASSWORD,
    }
    cmd = [sys.executable, "-m", "kloop.cli.agent", "workspace", "push", "--path", str(result)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    assert proc.poll() is None and not result.exists(), "it waits for the agent to end"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    report = json.loads(result.read_text())
    assert report["commit"] == _remote_head(url, "kloop/r/sig-i1")
    assert PASSWORD not in stderr


class _FirstConnectionHangs:
    """A TCP proxy to the git server that holds its first connection open and never answers
    (as a lost SYN or a stale conntrack entry would), and forwards every later one."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections == 1:
                self.held.append(conn)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def test_a_connection_that_hangs_is_given_up_and_tried_again(
    server: tuple[GitServer, str], tmp_path: Path
) -> None:
    srv, url = server
    proxy = _FirstConnectionHangs(int(url.split(":")[2].split("/")[0]))
    try:
        via = url.replace(url.split("/")[2], f"127.0.0.1:{proxy.port}")
        settings = Settings(
            via,
            "main",
            "kloop/r/retry-i1",
            tmp_path / "ws",
            username=USER,
            password=PASSWORD,
            timeout=12,
        )
        settings.workspace.mkdir()
        started = time.monotonic()
        report = clone(settings)
        assert report.error is None, report.message
        assert 3 < time.monotonic() - started < 12, "the first attempt got its share, no more"
        assert proxy.connections >= 2
    finally:
        proxy.close()


def test_a_push_that_is_never_answered_says_it_got_as_far_as_the_post(
    server: tuple[GitServer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = server
    settings = replace(_settings(url, tmp_path / "ws", "kloop/r/hang-i1"), push_timeout=12)
    assert clone(settings).error is None
    (settings.workspace / "work.txt").write_text("done\n")
    _git(settings.workspace, "add", "work.txt")
    _git(settings.workspace, "commit", "-qm", "work")
    answer, release = GitHttpApp.__call__, threading.Event()

    def hold_receive_pack(app: GitHttpApp, environ: dict[str, Any], start: Any) -> Any:
        if str(environ.get("PATH_INFO", "")).endswith("/git-receive-pack"):
            release.wait(30)
        return answer(app, environ, start)

    monkeypatch.setattr(GitHttpApp, "__call__", hold_receive_pack)
    try:
        report = push(settings)
    finally:
        release.set()
    assert report.error is GitError.REMOTE_UNAVAILABLE, report.message
    assert "no answer within" in report.message
    assert "POST git-receive-pack" in report.message, report.message
    assert PASSWORD not in report.message
