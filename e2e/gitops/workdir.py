"""A working clone that tests write manifests into, commit and push, as a user would."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "kloop e2e",
    "GIT_AUTHOR_EMAIL": "e2e@kloop.invalid",
    "GIT_COMMITTER_NAME": "kloop e2e",
    "GIT_COMMITTER_EMAIL": "e2e@kloop.invalid",
}


class Workdir:
    """A clone of ``url`` in ``path`` on branch ``main``."""

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.path = path
        self.git("init", "-q", "--initial-branch=main", str(path), cwd=path.parent)
        self.git("remote", "add", "origin", url)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        env = {**os.environ, **GIT_IDENTITY, "GIT_TERMINAL_PROMPT": "0"}
        proc = subprocess.run(
            ["git", *args], cwd=cwd or self.path, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

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
