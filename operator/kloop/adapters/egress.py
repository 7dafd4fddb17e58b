"""The egress guard: every request the operator makes on a Loop author's behalf goes through here.

A Loop author chooses URLs the operator will fetch from inside the cluster, with the operator's
network position. The guard resolves the name itself, refuses loopback, link-local and
unspecified addresses (unless ``--allow-egress-cidr`` allows them), then connects to the vetted
address only (the Host header and TLS SNI still carry the name, so certificates are checked
against it): a DNS answer that changes between the check and the connection cannot redirect
the request. It reads at most ``max_bytes`` of the answer and follows redirects only on the
same scheme, host and port, each one checked again. No proxy from the environment is used.

Callers bound the total time (``asyncio.timeout``); the policy itself is in ``kloop.core.egress``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from kloop.core.egress import (
    IPAddress,
    IPNetwork,
    pick_address,
    redact_url,
    same_origin,
    scrub,
)

MAX_BODY_BYTES = 1024 * 1024
MAX_REDIRECTS = 3


class Refused(Exception):
    """The request breaks the policy (address, redirect, size): retrying cannot help."""


class Unavailable(Exception):
    """The server could not be reached or did not answer properly: it may work later."""


@dataclass(frozen=True)
class Answer:
    """A complete, size-capped answer."""

    status: int
    body: bytes
    url: str


@dataclass(frozen=True)
class EgressGuard:
    """The address policy in force: refused ranges minus the CIDRs the administrator allowed."""

    allowed: tuple[IPNetwork, ...] = ()

    async def resolve(self, host: str, port: int) -> IPAddress:
        """The address to connect to for ``host``, after resolution; Refused if none may be used."""
        prefix = ""
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(host)]
        except ValueError:
            prefix = f"{host} resolves to "
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except OSError as err:
                raise Unavailable(f"cannot resolve {host}: {err}") from err
            addresses = []
            for info in infos:
                address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                if address not in addresses:
                    addresses.append(address)
        chosen, refused = pick_address(addresses, self.allowed)
        if chosen is None:
            raise Refused(prefix + "; ".join(refused or ["no address"]))
        return chosen

    async def pinned(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        body: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        """A request for ``url`` that connects to the vetted address of its host, and no other."""
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as err:
            raise Refused(f"invalid URL: {scrub(str(err), url)}") from err
        if target.scheme not in ("http", "https") or not target.host:
            raise Refused("only http and https URLs with a host are allowed")
        port = target.port or (443 if target.scheme == "https" else 80)
        address = await self.resolve(target.host, port)
        extensions: dict[str, Any] = {}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host  # certificates are checked against the name
        return http.build_request(
            method,
            target.copy_with(host=str(address)),
            content=body,
            headers={
                **(headers or {}),
                "Host": target.netloc.decode("ascii"),
                "Accept-Encoding": "gzip, deflate",
            },
            extensions=extensions,
        )

    async def fetch(
        self,
        method: str,
        url: str,
        body: str | None = None,
        max_bytes: int = MAX_BODY_BYTES,
        max_redirects: int = MAX_REDIRECTS,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request (and its same-origin redirects) under the policy; Refused/Unavailable.

        Not bounded in time by itself: wrap it in ``asyncio.timeout`` for a total deadline.
        ``headers`` are sent as given (``Host`` and ``Accept-Encoding`` are the guard's own).
        """
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=None) as http:
            for _ in range(max_redirects + 1):
                request = await self.pinned(http, method, url, body, headers)
                try:
                    response = await http.send(request, stream=True)
                except httpx.HTTPError as err:
                    raise Unavailable(f"{type(err).__name__}: {scrub(str(err), url)}") from err
                try:
                    if not response.is_redirect:
                        data = await _read_capped(response, max_bytes)
                        return Answer(response.status_code, data, url)
                    location = str(httpx.URL(url).join(response.headers["Location"]))
                    if not same_origin(url, location):
                        raise Refused(
                            f"redirect to another host ({redact_url(location)}) not followed"
                        )
                    if response.status_code == 303:
                        method, body = "GET", None
                        headers = {
                            k: v for k, v in (headers or {}).items() if k.lower() != "content-type"
                        }
                    url = location
                except httpx.HTTPError as err:
                    raise Unavailable(f"{type(err).__name__}: {scrub(str(err), url)}") from err
                finally:
                    await response.aclose()
        raise Refused(f"more than {max_redirects} redirects")

    async def post_json(
        self,
        url: str,
        document: object,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = 64 * 1024,
    ) -> Answer:
        """POST ``document`` as JSON under the policy (webhooks); the answer is capped small."""
        return await self.fetch(
            "POST",
            url,
            json.dumps(document, separators=(",", ":"), sort_keys=True),
            max_bytes=max_bytes,
            headers={**(headers or {}), "Content-Type": "application/json"},
        )


def _decoder(response: httpx.Response) -> Any:
    """A zlib decompressor for the answer's Content-Encoding, None for identity."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise Refused(f"unsupported Content-Encoding {encoding[:40]!r}")


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The (decompressed) body, read as it streams in; Refused once it passes ``max_bytes``.

    Decompression is bounded too (``max_length``), so a small gzip bomb cannot expand in memory.
    """
    too_big = Refused(f"answer larger than {max_bytes} bytes, not read further")
    declared = response.headers.get("Content-Length", "")
    decoder = _decoder(response)
    if decoder is None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for raw in response.aiter_raw():
        pending = raw
        while pending:
            if decoder is None:
                out, pending = pending, b""
            else:
                out = decoder.decompress(pending, max_bytes - size + 1)
                pending = decoder.unconsumed_tail
            size += len(out)
            if size > max_bytes:
                raise too_big
            chunks.append(out)
    if decoder is not None:
        chunks.append(decoder.flush())
        if size + len(chunks[-1]) > max_bytes:
            raise too_big
    return b"".join(chunks)
