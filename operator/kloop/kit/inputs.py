"""Read what the operator hands an agent (docs/agent-contract.md) into one plain value.

Everything is optional: a missing file is an empty section, so the kit also runs outside a pod
(tests, a laptop) with only ``KLOOP_GOAL`` set.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

KLOOP_DIR = Path("/kloop")
MAX_FILE_BYTES = 64 * 1024
"""A skill or memory file is cut past this: prompts have a context window, and so do wallets."""
MAX_DIFF_BYTES = 96 * 1024
MAX_SKILL_FILES = 32


@dataclass(frozen=True)
class AgentInputs:
    """The contract's inputs, as text: what the prompt is built from."""

    role: str
    goal: str
    iteration: int = 1
    checker: str | None = None
    memory: str = ""
    skills: dict[str, str] = field(default_factory=dict)
    """``<configMap>/<file>`` -> text."""
    feedback: str = ""
    """/kloop/feedback.json as written (JSON)."""
    maker_result: str = ""
    """/kloop/maker.json (checkers only)."""
    diff: str = ""
    """The workspace's changes (``git diff``; checkers only), when there is a workspace."""


def _read(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data[:limit].decode(errors="replace")
    return text + "\n[… cut by kloop-agent]" if len(data) > limit else text


def _skills(root: Path) -> dict[str, str]:
    """Each regular file of each mounted skill ConfigMap (the ``..data`` links skipped)."""
    out: dict[str, str] = {}
    if not root.is_dir():
        return out
    for config_map in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(config_map.iterdir()):
            if file.name.startswith(".") or not file.is_file() or len(out) >= MAX_SKILL_FILES:
                continue
            out[f"{config_map.name}/{file.name}"] = _read(file)
    return out


def _git(workspace: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(workspace), *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
    )
    return done.stdout if done.returncode == 0 else ""


def workspace_diff(workspace: Path, base: str | None = None, limit: int = MAX_DIFF_BYTES) -> str:
    """What changed in the checkout: since ``base`` when known, else the last commit.

    With ``base`` (``KLOOP_BASE_COMMIT``): the commits since it and uncommitted changes. Without
    it (a shallow clone has no merge base to find): the last commit, then uncommitted changes, so
    a checker sees both what was committed and what was merely left in the tree.
    """
    if not (workspace / ".git").exists():
        return ""
    if base and not _git(workspace, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"):
        base = None  # not in the shallow checkout: the last commit is better than nothing
    if base:
        text = _git(workspace, "diff", "--no-color", base)
    else:
        committed = _git(workspace, "show", "--no-color", "--format=commit %H%n%n%s%n", "HEAD")
        uncommitted = _git(workspace, "diff", "--no-color", "HEAD")
        untracked = _git(workspace, "ls-files", "--others", "--exclude-standard")
        text = committed
        if uncommitted.strip():
            text += "\n# not committed:\n" + uncommitted
        if untracked.strip():
            text += "\n# untracked (not committed) files:\n" + untracked
    data = text.encode()
    if len(data) > limit:
        return data[:limit].decode(errors="ignore") + "\n[… diff cut by kloop-agent]"
    return text


def read_inputs(
    role: str, env: Mapping[str, str] | None = None, root: Path = KLOOP_DIR
) -> AgentInputs:
    """The inputs from ``env`` (default: the process's) and the files under ``root``."""
    env = os.environ if env is None else env
    memory_dir = Path(env.get("KLOOP_MEMORY_DIR") or root / "memory")
    feedback = Path(env.get("KLOOP_FEEDBACK") or root / "feedback.json")
    workspace = env.get("KLOOP_WORKSPACE") or str(root / "workspace")
    try:
        iteration = int(env.get("KLOOP_ITERATION") or 1)
    except ValueError:
        iteration = 1
    return AgentInputs(
        role=role,
        goal=env.get("KLOOP_GOAL", ""),
        iteration=iteration,
        checker=env.get("KLOOP_CHECKER") or None,
        memory=_read(memory_dir / "memory.md"),
        skills=_skills(root / "skills"),
        feedback=_read(feedback),
        maker_result=_read(root / "maker.json") if role == "checker" else "",
        diff=(
            workspace_diff(Path(workspace), env.get("KLOOP_BASE_COMMIT") or None)
            if role == "checker"
            else ""
        ),
    )
