"""MCP connectors: the handshake before a stage's first pod, through the egress guard.

The official SDK (``mcp``) speaks streamable HTTP over an ``httpx2`` client kloop builds for
each handshake, so the SDK cannot reach anything the guard refused: its transport connects only
to the address the guard resolved and checked (the Host header and TLS SNI still carry the
name), refuses every request to another origin, follows no redirect (``max_redirects=0``, no
proxy from the environment) and caps every answer's size. The whole handshake (resolution,
initialize, every tools/list page, closing the session) has one deadline.

Header values come from the connector's ``headersSecretRef`` (each key a header). They are
sent to the server and nowhere else: outcomes, status, Events and logs carry header names only,
and error texts are scrubbed of the values in case a server or library echoes one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation, PaginatedRequestParams

from kloop import __version__
from kloop.adapters.egress import EgressGuard, Refused, Unavailable
from kloop.adapters.kube import Kube, is_status
from kloop.api.loop import Connector
from kloop.core.connectors import header_problems
from kloop.core.egress import REDACTED, IPAddress, redact_url, scrub
from kloop.core.model import ConnectorOutcome

log = logging.getLogger("kloop.connectors")

HANDSHAKE_SECONDS = 10.0
ATTEMPTS = 3
MAX_ANSWER_BYTES = 1024 * 1024
MAX_TOOL_PAGES = 10
CLIENT = Implementation(name="kloop-operator", version=__version__)


class ConnectorError(Exception):
    """The connector cannot be checked (its Secret is missing or unusable)."""


class _PolicyError(Exception):
    """A request the guard's transport would not send, or an answer it would not read."""


class _HttpStatus(Exception):
    """The server answered a message with an HTTP error status (the SDK says only "error")."""

    def __init__(self, status: int) -> None:
        hint = " (check the connector's headersSecretRef)" if status in (401, 403) else ""
        super().__init__(f"the server answered HTTP {status}{hint}")
        self.status = status


@dataclass
class _Capped(httpx2.AsyncByteStream):
    """An answer's body, read as it streams in; fails once it passes ``max_bytes``."""

    inner: httpx2.AsyncByteStream
    max_bytes: int
    transport: PinnedTransport
    seen: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.seen += len(chunk)
            if self.seen > self.max_bytes:
                # noted on the transport: the SDK may report the failure as a generic error
                self.transport.refused = f"answer larger than {self.max_bytes} bytes, not read"
                raise _PolicyError(self.transport.refused)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class PinnedTransport(httpx2.AsyncBaseTransport):
    """Send requests for one origin to one checked address, and nothing else."""

    url: httpx2.URL
    address: IPAddress
    max_bytes: int = MAX_ANSWER_BYTES
    refused: str | None = None
    error_status: int | None = None
    """The last HTTP error status of a message (POST); a GET stream's 405 is no error."""
    inner: httpx2.AsyncHTTPTransport = field(
        default_factory=lambda: httpx2.AsyncHTTPTransport(trust_env=False, retries=0)
    )

    def _origin(self, url: httpx2.URL) -> tuple[str, str, int | None]:
        return (url.scheme, url.host, url.port)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """The request, to the checked address; refused if it is for another origin."""
        target = request.url
        if self._origin(target) != self._origin(self.url):
            self.refused = f"request to another origin ({redact_url(str(target))}) not sent"
            raise _PolicyError(self.refused)
        request.url = target.copy_with(host=str(self.address))  # Host header keeps the name
        if target.scheme == "https":  # certificates are checked against the name
            request.extensions = {**request.extensions, "sni_hostname": target.host}
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and response.status_code >= 400:
            self.error_status = response.status_code
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        response.stream = _Capped(stream, self.max_bytes, self)
        return response

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.inner.aclose()


async def read_headers(kube: Kube, namespace: str, connector: Connector) -> dict[str, str]:
    """The headers from ``headersSecretRef`` (each key a header); ConnectorError if unusable."""
    ref = connector.mcp.headers_secret_ref
    if ref is None:
        return {}
    try:
        secret = await kube.call(kube.core.read_namespaced_secret, ref.name, namespace)
    except Exception as err:
        if is_status(err, 404):
            raise ConnectorError(f"Secret {ref.name!r} not found in {namespace}") from err
        if is_status(err, 403):
            raise ConnectorError(f"the operator may not read Secret {ref.name!r} (403)") from err
        raise ConnectorError(f"cannot read Secret {ref.name!r}: {type(err).__name__}") from err
    headers = {}
    for key, raw in sorted((secret.get("data") or {}).items()):
        try:
            value = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as err:
            raise ConnectorError(f"key {key!r} of Secret {ref.name!r} is not UTF-8 text") from err
        if "\r" in value or "\n" in value or not value.isprintable() or not value.isascii():
            raise ConnectorError(  # checked here, so no encoding error can quote the value
                f"key {key!r} of Secret {ref.name!r} holds a line break, a control character or "
                "a non-ASCII character (a trailing newline from --from-file?): not a header value"
            )
        headers[key] = value
    return headers


def _leaves(err: BaseException) -> list[BaseException]:
    """The exceptions an anyio task group wrapped, flattened."""
    if isinstance(err, BaseExceptionGroup):
        return [leaf for inner in err.exceptions for leaf in _leaves(inner)]
    return [err]


def _describe(err: BaseException) -> tuple[str, bool]:
    """The most telling failure in ``err``, and whether retrying may help."""
    leaves = _leaves(err)
    for leaf in leaves:
        if isinstance(leaf, _HttpStatus):
            return str(leaf), leaf.status >= 500 or leaf.status == 429
        if isinstance(leaf, (_PolicyError, Refused)):
            return f"refused by the egress guard: {leaf}", False
    for leaf in leaves:
        if isinstance(leaf, (httpx2.TransportError, Unavailable, ConnectionError)):
            return f"{type(leaf).__name__}: {leaf}", True
    leaf = leaves[0]
    return f"{type(leaf).__name__}: {leaf}", False


@dataclass
class _Found:
    server_name: str | None = None
    server_version: str | None = None
    protocol_version: str | None = None
    tools: list[str] = field(default_factory=list)
    done: bool = False


async def _handshake(
    url: str, address: IPAddress, headers: dict[str, str], found: _Found
) -> PinnedTransport:
    """initialize, then tools/list (every page, bounded), into ``found`` (emptied first)."""
    found.server_name = found.server_version = found.protocol_version = None
    found.tools = []
    transport = PinnedTransport(httpx2.URL(url), address)
    async with httpx2.AsyncClient(
        transport=transport,
        headers=headers,
        trust_env=False,
        follow_redirects=False,
        max_redirects=0,
        timeout=httpx2.Timeout(HANDSHAKE_SECONDS),
    ) as http:
        try:
            async with (
                streamable_http_client(url, http_client=http) as streams,
                ClientSession(streams[0], streams[1], client_info=CLIENT) as session,
            ):
                init = await session.initialize()
                found.server_name = init.server_info.name
                found.server_version = init.server_info.version
                found.protocol_version = init.protocol_version
                cursor: str | None = None
                for _ in range(MAX_TOOL_PAGES):
                    params = PaginatedRequestParams(cursor=cursor) if cursor else None
                    page = await session.list_tools(params=params)
                    found.tools += [t.name for t in page.tools]
                    cursor = page.next_cursor
                    if not cursor:
                        break
                found.done = True
        except Exception as err:
            if found.done:
                return transport  # the answers are in; a failing close (DELETE) changes nothing
            if transport.refused is not None:
                raise _PolicyError(transport.refused) from err
            if transport.error_status is not None:
                raise _HttpStatus(transport.error_status) from err
            raise
    return transport


async def _attempts(url: str, headers: dict[str, str], guard: EgressGuard, found: _Found) -> None:
    """Up to ATTEMPTS handshakes; only transport errors (refused connection...) are retried."""
    target = httpx2.URL(url)
    port = target.port or (443 if target.scheme == "https" else 80)
    last = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(0.5 * attempt)
        try:
            address = await guard.resolve(target.host, port)
        except Unavailable as err:
            last = str(err)
            continue
        try:
            await _handshake(url, address, headers, found)
            return
        except Exception as err:  # noqa: BLE001 - classified: policy, transport, protocol
            last, transient = _describe(err)
            if not transient:
                raise _Final(last) from err
    raise _Final(f"unreachable after {ATTEMPTS} attempts: {last}")


class _Final(Exception):
    """The handshake failed; the message says why."""


async def probe(
    connector: Connector,
    headers: dict[str, str],
    guard: EgressGuard,
    timeout: float = HANDSHAKE_SECONDS,
) -> ConnectorOutcome:
    """Initialize + tools/list with one connector, within ``timeout``; never raises."""
    url = connector.mcp.url
    names = tuple(sorted(headers))
    if header_problems(connector.name, names):
        # not sent at all (a Secret's Host would reach another virtual host behind the checked
        # address); the decision names the headers from ``names``
        log.info(
            "connector not checked: unusable header names", extra={"connector": connector.name}
        )
        return ConnectorOutcome(headers=names)
    found = _Found()
    error: str | None = None
    try:
        async with asyncio.timeout(timeout):
            await _attempts(url, headers, guard, found)
    except TimeoutError:
        if not found.done:
            error = f"no answer to the MCP handshake within {timeout:g}s"
    except Refused as err:
        error = f"refused by the egress guard: {err}"
    except _Final as err:
        error = str(err)
    except httpx2.InvalidURL as err:
        error = f"invalid URL: {err}"
    if error is not None:
        error = _mask(error, url, headers)[:600]
    outcome = ConnectorOutcome(
        server_name=found.server_name,
        server_version=found.server_version,
        protocol_version=found.protocol_version,
        tools=tuple(found.tools),
        headers=names,
        error=error,
    )
    log.info(
        "connector checked",
        extra={
            "connector": connector.name,
            "url": redact_url(url),
            "server": outcome.server_name,
            "protocol": outcome.protocol_version,
            "tools": len(outcome.tools),
            "error": outcome.error,
        },
    )
    return outcome


def _mask(text: str, url: str, headers: dict[str, str]) -> str:
    """``text`` without header values (longest first) or the URL's own credentials."""
    for value in sorted(set(headers.values()), key=len, reverse=True):
        if len(value) >= 3:
            text = text.replace(value, REDACTED)
    return scrub(text, url)


async def check(
    kube: Kube, namespace: str, connector: Connector, guard: EgressGuard
) -> ConnectorOutcome:
    """Read the connector's headers, then probe it; any failure is an outcome with an error."""
    try:
        headers = await read_headers(kube, namespace, connector)
    except ConnectorError as err:
        log.info("connector not checked", extra={"connector": connector.name, "error": str(err)})
        return ConnectorOutcome(error=str(err))
    return await probe(connector, headers, guard)
