"""A working clone that tests write manifests into, commit and push, as a user would."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from e2e.gitops.git_server import recent_requests

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "kloop e2e",
    "GIT_AUTHOR_EMAIL": "e2e@kloop.invalid",
    "GIT_COMMITTER_NAME": "kloop e2e",
    "GIT_COMMITTER_EMAIL": "e2e@kloop.invalid",
}
GIT_TIMEOUT = 60.0
"""Seconds one git command may take; a loopback push of a few manifests takes well under one."""
NETWORK_ATTEMPTS = 3
"""Tries of a command that talks to the server (push, fetch, ...); repeating one is harmless."""
NETWORK_COMMANDS = frozenset({"push", "fetch", "pull", "clone", "ls-remote"})
TERM_GRACE = 3.0
"""Seconds git gets after SIGTERM to clean up (a clone removes its half-written directory)."""
_OPTIONS_WITH_VALUE = frozenset(
    {"-c", "-C", "--config-env", "--attr-source", "--git-dir", "--work-tree", "--namespace"}
)
_AUTHORIZATION = re.compile(
    r"(Authorization:\s*(?:(?:Basic|Bearer|Token|Digest|Negotiate)\s+)?)[^\s'\"]+", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")


class GitTimeout(RuntimeError):
    """A git command got no further within ``GIT_TIMEOUT``; the message says where it was."""


class Workdir:
    """A clone of ``url`` in ``path`` on branch ``main``."""

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.path = path
        self.git("init", "-q", "--initial-branch=main", str(path), cwd=path.parent)
        self.git("remote", "add", "origin", url)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return run_git(*args, cwd=cwd or self.path)

    def write_yaml(self, relative: str, *documents: object) -> None:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump_all(documents, sort_keys=False))

    def commit_and_push(self, message: str, *push_options: str) -> str:
        """Commit everything and push ``main``; returns the new commit's SHA."""
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git(*push_options, "push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD").strip()


def run_git(*args: str, cwd: Path) -> str:
    """Run git in ``cwd``; a network command that hangs is killed, reported and run again.

    CI once saw a loopback ``git push`` never return while the test server had no request in
    progress: the report on stderr (the git processes' state, git's own trace, what the test
    server last answered) says where it stood.
    """
    attempts = NETWORK_ATTEMPTS if subcommand(args) in NETWORK_COMMANDS else 1
    for attempt in range(1, attempts + 1):
        try:
            return _run_once(args, cwd)
        except GitTimeout as err:
            print(f"attempt {attempt}/{attempts}: {err}", file=sys.stderr, flush=True)
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _run_once(args: tuple[str, ...], cwd: Path) -> str:
    with tempfile.NamedTemporaryFile(prefix="kloop-git-trace-", suffix=".log") as trace:
        env = {
            **os.environ,
            **GIT_IDENTITY,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_TRACE": trace.name,
            "GIT_TRACE_CURL": trace.name,
            "GIT_TRACE_CURL_NO_DATA": "1",
        }
        # its own session: a timeout kills git's helpers too (git-remote-http, send-pack), which
        # would otherwise hold the output pipes open
        proc = subprocess.Popen(
            ["git", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            where = _session_state(proc.pid)
            _stop_session(proc)
            report = (
                f"git {' '.join(args)} did not finish in {GIT_TIMEOUT:.0f}s\n"
                f"its processes:\n{where}\n"
                f"its trace (tail):\n{_tail(Path(trace.name))}\n"
                f"the test git servers' last requests:\n{recent_requests()}"
            )
            raise GitTimeout(redact(report)) from None
    if proc.returncode != 0:
        raise RuntimeError(redact(f"git {' '.join(args)} failed: {err}"))
    return out


def subcommand(args: tuple[str, ...]) -> str | None:
    """The git command in ``args``, after git's own options (``-c key=value``, ``-C dir``)."""
    rest = iter(args)
    for arg in rest:
        if arg in _OPTIONS_WITH_VALUE:
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


def redact(text: str) -> str:
    """``Authorization: [scheme] <secret>`` and ``://user:<secret>@`` with the secret hidden."""
    return _URL_PASSWORD.sub(r"\1<redacted>@", _AUTHORIZATION.sub(r"\1<redacted>", text))


def _stop_session(proc: subprocess.Popen[str]) -> None:
    """SIGTERM git and its helpers, SIGKILL what is left after ``TERM_GRACE``.

    A helper that left the session (none of git's do) could still hold the pipes: then this
    gives up after the SIGKILL's 10 s; a clone that needed SIGKILL leaves its directory behind,
    and its retry fails saying so.
    """
    for sig, grace in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.communicate(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _session_state(sid: int) -> str:
    """Each process of session ``sid``: pid, state, what it waits in, command line."""
    lines = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) != sid:  # fields after "pid (comm)": state ppid pgrp session ...
                continue
            wchan = (entry / "wchan").read_text()
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError):
            continue  # ended meanwhile
        lines.append(f"  {entry.name} {fields[0]} wchan={wchan or '-'} {argv}")
    return "\n".join(lines) or "  (none left)"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "  (none)"
    return "\n".join(f"  {line}" for line in text[-lines:]) or "  (empty)"
