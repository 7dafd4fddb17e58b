"""``kloop-agent workspace clone|push``: kloop's own containers in a pod with a git workspace.

    kloop-agent workspace clone   # init container: check the decided commit out on KLOOP_BRANCH
    kloop-agent workspace push    # native sidecar: on SIGTERM (the agent ended), push KLOOP_BRANCH

The operator renders both (``kloop.adapters.workspace``) and reads their reports from the pod's
status (``kloop.api.gitreport``). Credentials arrive as environment variables
(``KLOOP_GIT_USERNAME``/``KLOOP_GIT_PASSWORD``, or ``KLOOP_GIT_TOKEN``) and reach git only as an
``http.extraHeader`` in ``GIT_CONFIG_*`` of the git processes: never a command line, never
``.git/config``, masked in every message.

The push never runs git inside the agent's repository: the agent wrote its ``.git`` (hooks,
``url.*.insteadOf``, ``http.*``), and the push holds the credentials. It resolves the agent's
HEAD by reading the ref files as data and pushes from a private repository of its own that
borrows the agent's objects (``GIT_ALTERNATE_OBJECT_DIRECTORIES``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kloop.api.gitreport import GitError, GitReport
from kloop.core.egress import REDACTED, redact_url, scrub

DEFAULT_PATH = "/dev/termination-log"
DEFAULT_TIMEOUT = 120
TOKEN_USERNAME = "x-access-token"
"""The user name sent with a bare token (GitHub's convention; other hosts ignore the name)."""
IDENTITY = (("user.name", "kloop maker"), ("user.email", "maker@kloop.invalid"))
SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")

_UNREACHABLE = (
    "unable to access",
    "could not resolve host",
    "failed to connect",
    "connection refused",
    "connection timed out",
    "timed out",
    "no route to host",
    "authentication failed",
    "could not read username",
    "terminal prompts disabled",
    "returned error: 401",
    "returned error: 403",
    "empty reply",
    "recv failure",
)
_REJECTED = ("[rejected]", "non-fast-forward", "fetch first", "[remote rejected]")


@dataclass(frozen=True)
class Settings:
    """What the operator set in the container's environment."""

    url: str
    start: str
    branch: str
    workspace: Path
    commit: str | None = None
    base: str | None = None
    """Checkers: the commit the maker started at, fetched too so ``git diff <base>`` works."""
    username: str = ""
    password: str = ""
    token: str = ""
    timeout: int = DEFAULT_TIMEOUT
    push_timeout: int = 25

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        """Read the ``KLOOP_*`` variables the operator rendered."""
        return cls(
            url=env["KLOOP_GIT_URL"],
            start=env.get("KLOOP_GIT_START") or "main",
            branch=env["KLOOP_BRANCH"],
            workspace=Path(env.get("KLOOP_WORKSPACE") or "/kloop/workspace"),
            commit=env.get("KLOOP_GIT_COMMIT") or None,
            base=env.get("KLOOP_GIT_BASE") or None,
            username=env.get("KLOOP_GIT_USERNAME", ""),
            password=env.get("KLOOP_GIT_PASSWORD", ""),
            token=env.get("KLOOP_GIT_TOKEN", ""),
            timeout=int(env.get("KLOOP_GIT_TIMEOUT") or DEFAULT_TIMEOUT),
            push_timeout=int(env.get("KLOOP_GIT_PUSH_TIMEOUT") or 25),
        )

    def header(self) -> str | None:
        """The Authorization header: username/password, or a token, or none."""
        secret = self.password or self.token
        if not secret:
            return None
        user = self.username or TOKEN_USERNAME
        raw = f"{user}:{secret}".encode()
        return "Authorization: Basic " + base64.b64encode(raw).decode()

    def secrets(self) -> list[str]:
        """Every value that must never appear in a message."""
        header = self.header()
        values = [self.password, self.token, header or ""]
        if header:
            values.append(header.removeprefix("Authorization: Basic "))
        return [v for v in values if v]

    def mask(self, text: str) -> str:
        """``text`` with the credentials and the URL's userinfo masked."""
        text = scrub(text, self.url)
        for secret in self.secrets():
            text = text.replace(secret, REDACTED)
        return text


def git_environment(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for git: no user or system config, no prompts, http(s) only."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ALLOW_PROTOCOL": "http:https",
    }
    # the emptyDir belongs to root, the kit runs as 65532: git must accept the checkout
    config = [
        ("http.followRedirects", "false"),
        ("credential.helper", ""),
        ("safe.directory", str(settings.workspace)),
    ]
    header = settings.header()
    if header:
        config.append(("http.extraHeader", header))
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for i, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env | (extra or {})


def classify(output: str, default: GitError) -> GitError:
    """Which error git's output describes: a rejected push, an unreachable remote, or else."""
    text = output.lower()
    if any(marker in text for marker in _REJECTED):
        return GitError.PUSH_REJECTED
    if any(marker in text for marker in _UNREACHABLE):
        return GitError.REMOTE_UNAVAILABLE
    return default


class GitFailed(Exception):
    """A git command failed; carries the report's reason and masked message."""

    def __init__(self, error: GitError, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


# what ``git push -v --progress`` adds to its output: where it pushes and its progress meters
_CHATTER = re.compile(
    r"^(Pushing to |POST git-|Total \d|Delta compression"
    r"|(Enumerating|Counting|Compressing|Writing) objects:)"
)


def _lines(output: str) -> list[str]:
    """Git's output line by line, a progress meter (redrawn after a CR) at its last reading."""
    pieces = (line.split("\r") for line in output.split("\n"))
    last = (next((p for p in reversed(ps) if p.strip()), "") for ps in pieces)
    return [" ".join(line.split()) for line in last if line.strip()]


def progress_of(stderr: str) -> str:
    """How far a git command got, from its stderr on one line (the URL it names left out)."""
    return " / ".join(line for line in _lines(stderr) if not line.startswith("Pushing to "))


def tail(text: str, limit: int = 300) -> str:
    """The end of ``text`` within ``limit`` characters, cut where one line ended."""
    if len(text) <= limit:
        return text
    end = text[-limit:]
    return end.split(" / ", 1)[1] if " / " in end else end


def _verb(args: list[str]) -> str:
    """The git command of an argument list (``-C <dir>`` skipped)."""
    rest = args[2:] if args[:1] == ["-C"] else args
    return rest[0] if rest else "git"


def _git(
    settings: Settings,
    args: list[str],
    timeout: int,
    default: GitError,
    env: dict[str, str] | None = None,
) -> str:
    # its own process group: on a timeout every helper git started goes too (a helper left
    # running would hold our pipes open, and reading them would never end)
    proc = subprocess.Popen(
        ["git", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=git_environment(settings, env),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        said = tail(settings.mask(progress_of(stderr)))  # masked whole, then cut
        where = redact_url(settings.url)
        raise GitFailed(
            GitError.REMOTE_UNAVAILABLE,
            f"git {_verb(args)} {where}: no answer within {timeout}s"
            + (f" ({said})" if said else ""),
        ) from None
    if proc.returncode != 0:
        output = f"{stdout}\n{stderr}".strip()
        lines = [
            line
            for line in _lines(output)
            if not line.startswith(("hint:", "To ", "Done")) and not _CHATTER.match(line)
        ][-4:]
        message = settings.mask(" ".join(lines))[:900]
        raise GitFailed(classify(output, default), f"git {_verb(args)}: {message}")
    return stdout.strip()


ATTEMPTS = 3


def _git_retrying(
    settings: Settings,
    args: list[str],
    budget: int,
    default: GitError,
    env: dict[str, str] | None = None,
) -> str:
    """``_git`` for a command that talks to the remote: up to three attempts within ``budget``.

    git gives a connection that hangs (a SYN lost, a stale conntrack entry) no timeout of its
    own; a fresh attempt is a fresh connection. Each attempt gets an equal share of what is
    left. Only an unreachable remote is retried; fetching and pushing a fixed commit to a fixed
    ref are idempotent.
    """
    deadline = time.monotonic() + budget
    for attempt in range(ATTEMPTS, 0, -1):
        share = max(int((deadline - time.monotonic()) / attempt), 1)
        try:
            return _git(settings, args, share, default, env)
        except GitFailed as err:
            if err.error is not GitError.REMOTE_UNAVAILABLE or attempt == 1:
                raise
            print(f"kloop workspace: {err.message}; trying again", file=sys.stderr)
            time.sleep(1)
    raise AssertionError("unreachable")


def clone(settings: Settings) -> GitReport:
    """Check ``start`` (or exactly ``commit``) out on ``branch``, shallowly; the report."""
    refs = (settings.start, settings.branch, settings.commit or "", settings.base or "")
    if any(v.startswith("-") for v in refs):
        return GitReport(error=GitError.CHECKOUT_FAILED, message="a ref may not start with '-'")
    os.umask(0)  # the agent may run as another user: the pod-private checkout is everyone's
    ws = str(settings.workspace)
    fail = GitError.CHECKOUT_FAILED
    where = redact_url(settings.url)
    try:
        _git(settings, ["init", "-q", ws], 30, fail)
        _git(settings, ["-C", ws, "config", "core.sharedRepository", "0666"], 30, fail)
        for key, value in IDENTITY:  # so an agent's `git commit` works as is
            _git(settings, ["-C", ws, "config", key, value], 30, fail)
        _git(settings, ["-C", ws, "remote", "add", "origin", settings.url], 30, fail)
        fetch = ["-C", ws, "fetch", "-q", "--depth", "1", "--no-tags", "--end-of-options", "origin"]
        _git_retrying(settings, [*fetch, settings.start], settings.timeout, fail)
        head = _git(settings, ["-C", ws, "rev-parse", "FETCH_HEAD^{commit}"], 30, fail)
        if settings.commit and settings.commit != head:
            try:  # the branch moved on since: fetch the commit itself
                _git_retrying(settings, [*fetch, settings.commit], settings.timeout, fail)
            except GitFailed as err:
                raise GitFailed(
                    err.error,
                    f"commit {settings.commit} is not on {settings.start} any more and cannot "
                    f"be fetched by itself: {err.message}",
                ) from None
            head = settings.commit
        if not SHA.match(head):
            raise GitFailed(fail, f"{settings.start} did not resolve to a commit: {head[:80]!r}")
        _git(settings, ["-C", ws, "checkout", "-q", "-B", settings.branch, head], 60, fail)
    except GitFailed as err:
        return GitReport(error=err.error, message=f"{where} {settings.start}: {err.message}"[:1024])
    message = f"{settings.branch} at {head} from {settings.start}"
    if settings.base and settings.base != head:
        message += _fetch_base(settings, fetch)
    return GitReport(commit=head, message=message[:1024])


def _fetch_base(settings: Settings, fetch: list[str]) -> str:
    """Fetch the maker's start as well (depth 1: its tree is what ``git diff <base>`` needs).

    The checkout is shallow, so the maker's commits end in a history without ``base``. Without
    it the diff cannot be made, but the commit can still be graded: a note, not a failure.
    """
    if not SHA.match(settings.base or ""):
        return f"; base {settings.base!r} is not a commit id, not fetched"
    try:
        _git_retrying(
            settings, [*fetch, settings.base or ""], settings.timeout, GitError.CHECKOUT_FAILED
        )
    except GitFailed as err:
        print(f"kloop workspace: base not fetched: {err.message}", file=sys.stderr)
        return f"; base {settings.base} not fetched: {err.message}"
    return f"; base {settings.base} fetched"


def _read_ref(git_dir: Path, ref: str) -> str | None:
    """A ref's commit, read from its loose file or ``packed-refs`` (as data, no git)."""
    if not ref.startswith("refs/") or ".." in ref:
        return None
    loose = git_dir / ref
    if loose.is_file():
        value = loose.read_text().strip()
        return value if SHA.match(value) else None
    packed = git_dir / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and SHA.match(sha):
                return sha
    return None


def agent_head(workspace: Path) -> str | None:
    """The commit the agent's HEAD points at, following one symbolic ref."""
    git_dir = workspace / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
        if SHA.match(head):
            return head
        if head.startswith("ref: "):
            return _read_ref(git_dir, head.removeprefix("ref: ").strip())
    except OSError:
        return None
    return None


def push(settings: Settings) -> GitReport:
    """Push the agent's HEAD to ``branch`` (never forced) from a private repository."""
    head = agent_head(settings.workspace)
    if head is None:
        message = f"{settings.workspace} has no commit at HEAD to push (is .git intact?)"
        return GitReport(error=GitError.PUSH_FAILED, message=message)
    objects = settings.workspace / ".git" / "objects"
    with tempfile.TemporaryDirectory(prefix="kloop-push-") as private:
        env = {"GIT_DIR": private, "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects)}
        fail = GitError.PUSH_FAILED
        try:
            _git(settings, ["init", "-q", "--bare", private], 30, fail, env)
            shallow = settings.workspace / ".git" / "shallow"
            if shallow.is_file():  # the checkout is shallow: say where its history stops
                lines = [s for s in shallow.read_text().split() if SHA.match(s)]
                Path(private, "shallow").write_text("".join(f"{s}\n" for s in lines))
            refspec = f"{head}:refs/heads/{settings.branch}"
            # -v and --progress: a push that never finishes says how far it got (connected,
            # POSTed, or writing objects) in the timeout message
            args = ["push", "--porcelain", "--no-verify", "-v", "--progress", settings.url, refspec]
            _git_retrying(settings, args, settings.push_timeout, fail, env)
        except GitFailed as err:
            return GitReport(commit=head, error=err.error, message=err.message[:1024])
    return GitReport(commit=head, message=f"pushed {head} to {settings.branch}")


def _write(path: str, report: GitReport) -> None:
    text = report.model_dump_json(exclude_none=True)
    Path(path).write_text(text)
    print(f"kloop workspace: {report.error or 'ok'}: {report.message}", file=sys.stderr)


def wait_for_stop() -> None:
    """Block until SIGTERM (the agent ended, or the pod is being deleted) or SIGINT.

    Afterwards a repeated signal is caught and ignored (the push must still report), and the
    signals are unblocked again: git and its helpers inherit the mask, and a helper git stops
    with SIGTERM must not outlive it holding our pipes open.
    """
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)
    for sig in stop:  # a handler, not SIG_IGN: exec resets handlers but keeps SIG_IGN
        signal.signal(sig, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``workspace clone`` and ``workspace push`` under ``kloop-agent``."""
    workspace = sub.add_parser("workspace", help="kloop's own git checkout and push (internal)")
    actions = workspace.add_subparsers(dest="action", required=True)
    actions.add_parser("clone", help="check the decided commit out on KLOOP_BRANCH")
    push_parser = actions.add_parser("push", help="on SIGTERM, push KLOOP_BRANCH")
    push_parser.add_argument("--now", action="store_true", help="push at once, do not wait")
    for p in actions.choices.values():
        p.add_argument("--path", default=os.environ.get("KLOOP_RESULT_PATH", DEFAULT_PATH))


def run(args: argparse.Namespace) -> int:
    """Clone (exit 1 when it failed: the agent must not start) or push (always exit 0)."""
    settings = Settings.from_env(dict(os.environ))
    if args.action == "clone":
        report = clone(settings)
        _write(args.path, report)
        return 1 if report.error else 0
    if not args.now:
        wait_for_stop()
    _write(args.path, push(settings))
    return 0
