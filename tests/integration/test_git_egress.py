"""``git ls-remote`` for polling triggers obeys the egress guard, on loopback, without a cluster.

The e2e test polls a loopback repository with ``--allow-egress-cidr``; these check what it does
not: without the allowance the address is refused, and a redirect is not followed (git follows
the first one by default, which would let a remote send the operator anywhere).
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from e2e.gitops.git_server import git_server

from kloop.adapters.egress import EgressGuard, Refused, Unavailable
from kloop.adapters.git import Credentials, list_tags

pytestmark = pytest.mark.integration

LOOPBACK = EgressGuard((ipaddress.ip_network("127.0.0.0/8"),))


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[str]:
    """A repository on loopback with one tag, v1.0.0; yields its URL."""
    with git_server(tmp_path / "srv") as server:
        url = server.create_repo("app")
        work = tmp_path / "work"
        git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@kloop.local"]
        subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "one"], check=True)
        subprocess.run([*git, "tag", "v1.0.0"], check=True)
        subprocess.run([*git, "push", "-q", url, "main", "--tags"], check=True)
        yield url


@pytest.fixture
def redirect_to(repo: str) -> Iterator[str]:
    """A server on loopback that redirects every request to ``repo``; yields its URL."""

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(302)
            self.send_header("Location", repo + self.path.removeprefix("/moved.git"))
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/moved.git"
    finally:
        server.shutdown()
        server.server_close()


def test_an_allowed_address_is_listed(repo: str) -> None:
    assert list(asyncio.run(list_tags(LOOPBACK, repo))) == ["v1.0.0"]


def test_loopback_is_refused_unless_allowed(repo: str) -> None:
    with pytest.raises(Refused):
        asyncio.run(list_tags(EgressGuard(), repo))


def test_a_redirect_is_not_followed_and_credentials_stay_out_of_the_error(
    redirect_to: str,
) -> None:
    password = "pw-that-must-not-leak"
    with pytest.raises(Unavailable) as raised:
        asyncio.run(list_tags(LOOPBACK, redirect_to, Credentials("kloop", password)))
    assert password not in str(raised.value)
