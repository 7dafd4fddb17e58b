"""The loopback git server the Flux test syncs from: clone, push, and chunked pushes."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from e2e.gitops import workdir
from e2e.gitops.git_server import GitHttpApp, git_server
from e2e.gitops.workdir import Workdir


def test_push_then_clone_round_trips_commits(tmp_path: Path) -> None:
    with git_server(tmp_path / "srv") as server:
        (tmp_path / "srv").mkdir(exist_ok=True)
        url = server.create_repo("app")
        work = Workdir(url, tmp_path / "work")
        work.write_yaml("a.yaml", {"kind": "ConfigMap"})
        sha = work.commit_and_push("first")
        remote = subprocess.run(
            ["git", "ls-remote", url, "refs/heads/main"], capture_output=True, text=True, check=True
        )
        assert remote.stdout.split()[0] == sha
        subprocess.run(["git", "clone", "-q", url, str(tmp_path / "clone")], check=True)
        assert (tmp_path / "clone" / "a.yaml").read_text() == "kind: ConfigMap\n"


def test_push_larger_than_post_buffer_is_sent_chunked_and_accepted(tmp_path: Path) -> None:
    """A pack over ``http.postBuffer`` (floor 64 KiB) is sent chunked; the shim decodes it."""
    with git_server(tmp_path / "srv") as server:
        (tmp_path / "srv").mkdir(exist_ok=True)
        url = server.create_repo("big")
        work = Workdir(url, tmp_path / "work")
        (work.path / "blob.bin").write_bytes(os.urandom(2 * 1024 * 1024))
        sha = work.commit_and_push("big", "-c", "http.postBuffer=65536")
        clone = tmp_path / "clone"
        subprocess.run(["git", "clone", "-q", url, str(clone)], check=True)
        assert (clone / "blob.bin").read_bytes() == (work.path / "blob.bin").read_bytes()
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
        )
        assert head.stdout.strip() == sha


SECRET = "a2xvb3A6czNjcjN0"
AUTHORIZATION = f"Authorization: Basic {SECRET}"


def test_a_push_the_server_never_answers_is_killed_reported_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    serve, release = GitHttpApp._serve, threading.Event()
    held: list[str] = []

    def hold_first_receive_pack(app: GitHttpApp, environ: dict[str, Any], start: Any) -> Any:
        if str(environ.get("PATH_INFO", "")).endswith("/git-receive-pack") and not held:
            held.append("POST")
            release.wait(60)
        return serve(app, environ, start)

    monkeypatch.setattr(GitHttpApp, "_serve", hold_first_receive_pack)
    monkeypatch.setattr(workdir, "GIT_TIMEOUT", 4.0)
    monkeypatch.setattr(workdir, "TERM_GRACE", 20.0)  # killing git alone would wait this long
    with git_server(tmp_path / "srv") as server:
        url = server.create_repo("held")
        work = Workdir(url, tmp_path / "work")
        work.write_yaml("a.yaml", {"kind": "ConfigMap"})
        started = time.monotonic()
        try:
            sha = work.commit_and_push("first", "-c", f"http.extraHeader={AUTHORIZATION}")
        finally:
            release.set()
        took = time.monotonic() - started
        remote = subprocess.run(
            ["git", "ls-remote", url, "refs/heads/main"], capture_output=True, text=True, check=True
        )
    assert remote.stdout.split()[0] == sha, "the second attempt pushed"
    report = capsys.readouterr().err
    assert "did not finish in 4s" in report, report
    assert took < 4.0 + 10, "SIGTERM to git's whole session frees its pipes at once"
    assert SECRET not in report and "Authorization: Basic <redacted>" in report, report
    assert "git-remote-http" in report, "the hung helper is listed with its state"
    assert "Send header: POST /held.git/git-receive-pack" in report, "git's trace: how far"
    assert "/held.git/git-receive-pack? ... still serving" in report, report
    assert "attempt 2/3" not in report


def test_retries_are_for_the_commands_that_talk_to_the_server() -> None:
    assert workdir.subcommand(("-c", "user.name=push", "-C", "push", "push", "-q")) == "push"
    assert workdir.subcommand(("commit", "-m", "push")) == "commit"
    assert workdir.subcommand(("--config-env", "http.extraHeader=AUTH", "fetch")) == "fetch"
    assert workdir.subcommand(("--git-dir=x", "ls-remote", "url")) == "ls-remote"
    assert workdir.subcommand(("--version",)) is None


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("-c http.extraHeader=Authorization: Basic a2xvb3A6cHc= push", "Basic <redacted> push"),
        ("'Authorization: Bearer tok3n'", "Bearer <redacted>'"),
        ("Authorization: tok3n next", "Authorization: <redacted> next"),
        ("clone http://kloop:tok3n@127.0.0.1:1/a.git", "http://kloop:<redacted>@127.0.0.1"),
    ],
)
def test_reports_hide_credentials(text: str, shown: str) -> None:
    redacted = workdir.redact(text)
    assert shown in redacted and "tok3n" not in redacted and "a2xvb3A6cHc" not in redacted
