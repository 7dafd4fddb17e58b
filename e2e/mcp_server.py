"""A real MCP server for the connector tests, written with the official SDK (``MCPServer``).

Run as its own process (``python -m e2e.mcp_server --host 10.88.0.1 --port 8931 --tools a,b``),
it serves streamable HTTP at ``/mcp`` on one address of this machine (loopback, or the pods'
bridge so agent pods reach it too; never beyond this machine). With ``--require-header NAME`` it
answers 401 to any request whose header NAME differs from ``$MCP_TEST_HEADER_VALUE``, so a test
proves the operator and the pods sent the Secret's value; it logs each request's method and
whether the header matched, never the value.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2e.procs import log_tail, stop_process

HEADER_ENV = "MCP_TEST_HEADER_VALUE"


def _echo(tool: str) -> Any:
    """A tool that answers with its name and the text it got."""

    def echo(text: str) -> str:
        return f"{tool}: {text}"

    return echo


def _app(name: str, tools: list[str], header: str | None) -> Any:
    """The server's ASGI app: one echo tool per name, behind the optional header check."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings

    server = MCPServer(name, version="1.0.0")
    for tool in tools:
        server.add_tool(_echo(tool), name=tool, description=f"test tool {tool}")
    # a test server on a private address: DNS rebinding protection would refuse the bridge IP
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    inner = server.streamable_http_app(json_response=True, transport_security=security)
    expected = os.environ.get(HEADER_ENV, "").encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and header is not None:
            sent = dict(scope["headers"]).get(header.lower().encode())
            ok = sent == expected
            print(f"{scope['method']} {scope['path']} header-ok={ok}", flush=True)
            if not ok:
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        elif scope["type"] == "http":
            print(f"{scope['method']} {scope['path']}", flush=True)
        await inner(scope, receive, send)

    return app


def main() -> None:
    """Serve until terminated."""
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="kloop-test-tracker")
    parser.add_argument("--tools", default="search_issues")
    parser.add_argument("--require-header")
    args = parser.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    app = _app(args.name, tools, args.require_header)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def free_port(host: str) -> int:
    """A port on ``host`` nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def mcp_server(
    host: str,
    log: Path,
    tools: list[str],
    header: tuple[str, str] | None = None,
    name: str = "kloop-test-tracker",
) -> Iterator[str]:
    """The server as a separate process for the block; yields its URL (``http://host:port/mcp``)."""
    port = free_port(host)
    command = [sys.executable, "-m", "e2e.mcp_server", "--host", host, "--port", str(port)]
    command += ["--name", name, "--tools", ",".join(tools)]
    env = dict(os.environ)
    if header is not None:
        command += ["--require-header", header[0]]
        env[HEADER_ENV] = header[1]
    root = Path(__file__).resolve().parent.parent
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"MCP test server did not start:\n{log_tail(log)}") from None
                time.sleep(0.2)
        yield f"http://{host}:{port}/mcp"
    finally:
        stop_process(proc, grace=5)


if __name__ == "__main__":
    main()
