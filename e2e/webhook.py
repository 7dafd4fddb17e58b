"""A webhook receiver on loopback for notification tests: records what kloop POSTs to it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from e2e.procs import free_port

Json = dict[str, Any]


@dataclass
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: Json
    at: float


@dataclass
class Receiver:
    """What the receiver got, and whether it answers (``hang``: never, until the test ends)."""

    url: str
    hang: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    def events(self) -> list[tuple[str, str | None]]:
        """(event, stage) of each delivery, in arrival order."""
        return [(d.body["event"], d.body.get("stage")) for d in list(self.deliveries)]


@contextmanager
def receiver(path: str = "/hook", hang: bool = False) -> Iterator[Receiver]:
    """A receiver answering 204 (or hanging) on 127.0.0.1, on a free port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.block_on_close = False
    got = Receiver(f"http://127.0.0.1:{server.server_address[1]}{path}", hang=hang)
    server.receiver = got  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        got.released.set()
        server.shutdown()
        server.server_close()


def closed_port_url(path: str = "/hook") -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}{path}"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        got: Receiver = self.server.receiver  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        got.deliveries.append(
            Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
        )
        if got.hang:
            got.released.wait(600)
            return
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass
