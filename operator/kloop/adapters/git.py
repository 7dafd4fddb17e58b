"""List a remote's tags with ``git ls-remote``, through the egress guard.

The URL is a Loop author's choice, fetched from the operator's network position, so it gets the
HTTP oracles' treatment (``kloop.adapters.egress``): the host is resolved and checked here, and
git is pinned to the checked address (``http.curloptResolve``), so a DNS answer that changes in
between cannot send it elsewhere; redirects are not followed and no proxy or user/system git
config applies. Credentials travel in the environment (``GIT_CONFIG_*`` with an
``http.extraHeader``), never on the command line, and are masked in any error text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import tempfile
from dataclasses import dataclass
from urllib.parse import urlsplit

from kloop.adapters.egress import EgressGuard, Refused, Unavailable
from kloop.core.egress import REDACTED, redact_url, scrub
from kloop.core.tags import parse_ls_remote

LS_REMOTE_TIMEOUT = 30.0
MAX_OUTPUT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Credentials:
    """HTTP basic credentials for the remote (a token as password suits most hosts)."""

    username: str
    password: str

    def header(self) -> str:
        """The Authorization header git sends with every request."""
        raw = f"{self.username}:{self.password}".encode()
        return "Authorization: Basic " + base64.b64encode(raw).decode()


def _environment(credentials: Credentials | None, home: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ALLOW_PROTOCOL": "http:https",
    }
    if credentials is not None:
        env |= {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": credentials.header(),
        }
    return env


def _resolve_option(host: str, port: int, address: str) -> str:
    pinned = f"[{address}]" if ":" in address else address
    return f"http.curloptResolve={host}:{port}:{pinned}"


async def _read_capped(stream: asyncio.StreamReader) -> bytes:
    data = bytearray()
    while chunk := await stream.read(65536):
        data += chunk
        if len(data) > MAX_OUTPUT_BYTES:
            raise Refused(f"the remote listed more than {MAX_OUTPUT_BYTES} bytes of tags")
    return bytes(data)


async def list_tags(
    guard: EgressGuard,
    url: str,
    credentials: Credentials | None = None,
    timeout: float = LS_REMOTE_TIMEOUT,
) -> dict[str, str]:
    """{tag: commit} of the remote; Refused (policy) or Unavailable (network, auth, git)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("only http and https URLs with a host are allowed")
    if "@" in parts.netloc:
        raise Refused("credentials belong in the trigger's secretRef, not in the URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        raise Refused(f"invalid port in {redact_url(url)}") from err
    address = await guard.resolve(parts.hostname, port)
    secrets = [credentials.password, credentials.header()] if credentials else []
    with tempfile.TemporaryDirectory(prefix="kloop-git-") as home:
        proc = await asyncio.create_subprocess_exec(
            "git",
            "-c",
            _resolve_option(parts.hostname, port, str(address)),
            "-c",
            "http.followRedirects=false",
            "-c",
            "credential.helper=",
            "ls-remote",
            "--tags",
            "--",
            url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_environment(credentials, home),
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(timeout):
                out, stderr = await asyncio.gather(
                    _read_capped(proc.stdout), proc.stderr.read(16384)
                )
                await proc.wait()
        except (TimeoutError, Refused) as error:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(error, Refused):
                raise
            raise Unavailable(
                f"git ls-remote {redact_url(url)} took longer than {timeout:.0f}s"
            ) from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
    if proc.returncode != 0:
        text = stderr.decode(errors="replace").strip().splitlines()
        message = scrub(" ".join(text[-3:]), url)[:400]
        for secret in secrets:
            if secret:
                message = message.replace(secret, REDACTED)
        raise Unavailable(f"git ls-remote {redact_url(url)} failed: {message}")
    return parse_ls_remote(out.decode(errors="replace"))
