"""MCP connectors: the check before a stage's first pod, and what the pods of a role get.

Before any pod of a stage starts (so before the run's first pod, and again at each stage), the
operator does an MCP handshake (initialize + tools/list) with every connector; the I/O layer
makes it in the background, like an HTTP oracle query, and this module decides on the answers:
a server that does not answer, or lacks a tool the Loop lists, halts the run with
``ConnectorUnavailable`` before a token is spent. What was found is recorded in
``status.connectors`` (names of servers, protocol versions, tools: never a header value).

Pods of a connector's roles get ``/kloop/mcp.json`` in the ``mcpServers`` format MCP clients
read; header values stay in the Secret and reach the pod as environment variables
(``secretKeyRef``), referenced in the file as ``${KLOOP_MCP_<NAME>_<HEADER>}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from kloop.api.conditions import Reason
from kloop.api.loop import Connector, LoopSpec
from kloop.api.looprun import ConnectorCheck, LoopRunStatus
from kloop.core.context import Pass
from kloop.core.egress import redact_url
from kloop.core.model import (
    CheckConnector,
    ConnectorOutcome,
    CreatePod,
    PodRequest,
    SecretEnv,
)

MCP_FILE = "mcp.json"
"""The input file name: the pod reads it at /kloop/mcp.json."""
TOOLS_SHOWN = 32
"""Tools per connector kept in status (the required ones first); ``toolCount`` has them all."""
CHECK_WAKE_SECONDS = 20.0
"""Look again after this long even if the I/O layer's wake is lost (its timeout is shorter)."""
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "accept",
        "accept-encoding",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    }
)
"""Headers the HTTP client or the MCP transport sets: a Secret may not override them (``Host``
would defeat the egress guard's pinning; the others would break the protocol)."""


def env_name(connector: str, header: str) -> str:
    """``KLOOP_MCP_<CONNECTOR>_<HEADER>``: upper case, anything but letters and digits as ``_``."""
    return "_".join(["KLOOP_MCP", re.sub(r"[^A-Z0-9]", "_", connector.upper()), _env_part(header)])


def _env_part(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", text.upper())


def header_problems(connector: str, headers: tuple[str, ...]) -> list[str]:
    """Why these Secret keys cannot be sent as headers (reserved, or one variable for two)."""
    problems = [
        f"header {h!r} is set by the HTTP client or the MCP transport and may not come from the "
        "Secret"
        for h in headers
        if h.lower() in RESERVED_HEADERS
    ]
    seen: dict[str, str] = {}
    for header in headers:
        name = env_name(connector, header)
        if name in seen:
            problems.append(f"headers {seen[name]!r} and {header!r} both map to ${name}")
        seen[name] = header
    return problems


def variable_clash(spec: LoopSpec, status: LoopRunStatus) -> str | None:
    """Two connectors whose headers map to one variable (``my-db``'s ``X``, ``my``'s ``Db-X``).

    A pod would hold one value for both, so one server would be sent the other's header.
    """
    headers = {c.name: c.headers for c in status.connectors}
    seen: dict[str, str] = {}
    for connector in spec.connectors or []:
        if connector.mcp.headers_secret_ref is None:
            continue
        for header in headers.get(connector.name, []):
            name = env_name(connector.name, header)
            other = seen.setdefault(name, connector.name)
            if other != connector.name:
                return (
                    f"connectors {other!r} and {connector.name!r} both have a header that maps "
                    f"to ${name}: rename a connector or a key of its headersSecretRef"
                )
    return None


def assess(connector: Connector, outcome: ConnectorOutcome) -> str | None:
    """Why the connector cannot be used (down, unusable headers, missing tools); None if ok."""
    where = f"connector {connector.name!r} ({redact_url(connector.mcp.url)})"
    if outcome.error is not None:
        return f"{where}: {outcome.error}"
    problems = header_problems(connector.name, outcome.headers)
    if problems:
        return f"{where}: {'; '.join(problems)}"
    missing = [t for t in connector.tools if t not in outcome.tools]
    if missing:
        found = ", ".join(outcome.tools[:10]) + (", ..." if len(outcome.tools) > 10 else "")
        server = outcome.server_name or "the server"
        return (
            f"{where}: tool(s) {', '.join(missing)} not found on {server!r} "
            f"({len(outcome.tools)} listed: {found or 'none'})"
        )
    return None


def shown_tools(required: list[str], found: tuple[str, ...]) -> list[str]:
    """The tools status keeps: the required ones found first, then the others, bounded."""
    first = [t for t in required if t in found]
    rest = [t for t in found if t not in first]
    return [t[:128] for t in [*first, *rest][:TOOLS_SHOWN]]


def build_check(
    connector: Connector, stage: str, outcome: ConnectorOutcome, now: str
) -> ConnectorCheck:
    """The status record of one handshake."""
    problem = assess(connector, outcome)
    return ConnectorCheck(
        name=connector.name,
        stage=stage,
        checked_at=now,
        ready=problem is None,
        server_name=_clip(outcome.server_name, 128),
        server_version=_clip(outcome.server_version, 64),
        protocol_version=_clip(outcome.protocol_version, 32),
        tools=shown_tools(connector.tools, outcome.tools),
        tool_count=len(outcome.tools),
        headers=list(outcome.headers[:16]),
        message=_clip(problem, 1024),
    )


def _clip(text: str | None, size: int) -> str | None:
    return None if text is None else text[:size]


def _record(status: LoopRunStatus, spec: LoopSpec, check: ConnectorCheck) -> None:
    """Replace the connector's record; records follow the Loop's connectors, in its order."""
    by_name = {c.name: c for c in status.connectors}
    by_name[check.name] = check
    status.connectors = [by_name[c.name] for c in spec.connectors or [] if c.name in by_name]


@dataclass(frozen=True)
class Gate:
    """Whether a stage's pods may start: ``ready``, or waiting (no ``problem``), or not at all."""

    ready: bool
    problem: str | None = None


READY = Gate(True)
WAITING = Gate(False)


def connectors_step(p: Pass, spec: LoopSpec, stage: str) -> Gate:
    """Check the Loop's connectors once per stage, before any of its pods.

    Asks the I/O layer for the handshakes not answered yet and records each answer; the stage
    may go on once every connector is ready for it. The first unusable connector is the
    ``problem`` (the caller halts the run), even while others are still being asked.
    """
    connectors = spec.connectors or []
    done = {c.name for c in p.status.connectors if c.stage == stage and c.ready}
    todo = [c for c in connectors if c.name not in done]
    if not todo:
        return READY
    waiting = []
    for connector in todo:
        outcome = p.obs.connectors.get((stage, connector.name))
        if outcome is None:
            waiting.append(connector)
            continue
        check = build_check(connector, stage, outcome, p.now)
        _record(p.status, spec, check)
        if not check.ready:
            return Gate(False, check.message)
    if waiting:
        for connector in waiting:
            p.actions.append(CheckConnector(stage, connector.name))
        names = ", ".join(c.name for c in waiting)
        p.status.message = f"stage {stage!r}: checking connector(s) {names} before its first pod"
        p.why = p.status.message
        p.wake_in.append(CHECK_WAKE_SECONDS)
        return WAITING
    clash = variable_clash(spec, p.status)
    if clash is not None:
        return Gate(False, clash)
    found = "; ".join(
        f"{c.name}: {c.server_name or '?'} (MCP {c.protocol_version or '?'}, {c.tool_count} tools)"
        for c in p.status.connectors
        if c.stage == stage
    )
    p.event(Reason.CONNECTORS_READY, f"stage {stage!r}: connectors ready: {found}")
    return READY


# --- what pods get ------------------------------------------------------------------------------


def pod_connectors(
    spec: LoopSpec, status: LoopRunStatus, req: PodRequest
) -> tuple[str | None, tuple[SecretEnv, ...]]:
    """The mcp.json and header variables of a pod: connectors of its role that were found ready.

    A pod placed in a target cluster gets none: the header Secret lives in the run's namespace.
    """
    if req.in_target:
        return None, ()
    checks = {c.name: c for c in status.connectors if c.ready}
    servers: dict[str, object] = {}
    env: list[SecretEnv] = []
    for connector in spec.connectors or []:
        check = checks.get(connector.name)
        if check is None or req.role.value not in {r.value for r in connector.roles}:
            continue
        server: dict[str, object] = {"type": "http", "url": connector.mcp.url}
        ref = connector.mcp.headers_secret_ref
        if ref is not None and check.headers:
            server["headers"] = {h: "${" + env_name(connector.name, h) + "}" for h in check.headers}
            env += [SecretEnv(env_name(connector.name, h), ref.name, h) for h in check.headers]
        servers[connector.name] = server
    if not servers:
        return None, ()
    return json.dumps({"mcpServers": servers}, indent=2, sort_keys=True) + "\n", tuple(env)


def with_connectors(p: Pass, spec: LoopSpec) -> None:
    """Give every pod asked for in this pass the connectors of its role."""
    if not spec.connectors:
        return
    for i, action in enumerate(p.actions):
        if not isinstance(action, CreatePod):
            continue
        document, env = pod_connectors(spec, p.status, action.pod)
        if document is None:
            continue
        pod = replace(action.pod, files={**action.pod.files, MCP_FILE: document}, secret_env=env)
        p.actions[i] = CreatePod(pod)
