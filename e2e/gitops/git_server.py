"""A git server on loopback: ``git http-backend`` (smart HTTP) behind a small threaded WSGI shim.

Flux's GitRepository accepts only http(s) and ssh URLs, so tests serve their bare repositories
over plain HTTP on 127.0.0.1. The shim passes each request to ``git http-backend`` as CGI and
decodes chunked request bodies itself (git sends pushes larger than ``http.postBuffer`` chunked,
and CGI needs the body on stdin with a length).
"""

from __future__ import annotations

import base64
import collections
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import IO, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

HTTP_BACKEND = "http-backend"
StartResponse = Any  # wsgiref's start_response callable

_JOURNAL: collections.deque[str] = collections.deque(maxlen=20)
_IN_FLIGHT: dict[int, str] = {}
_JOURNAL_LOCK = threading.Lock()


def recent_requests() -> str:
    """What the git servers of this process answered last, and what they are still serving.

    A client that got no answer (a test's ``git push`` that hangs) prints this: it tells a
    request the server never saw from one it answered or is still working on.
    """
    with _JOURNAL_LOCK:
        done = list(_JOURNAL)
        busy = list(_IN_FLIGHT.values())
    lines = [f"  {line}" for line in done] + [f"  {line} ... still serving" for line in busy]
    return "\n".join(lines) or "  (none)"


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: on a loaded machine (a cold CI run) git's
    # connections overflowed it once and a clone was reset. Git opens one connection per request.
    request_queue_size = 64


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Keep pytest output clean; requests are not interesting unless they fail."""


def read_chunked(stream: IO[bytes]) -> bytes:
    """Decode a ``Transfer-Encoding: chunked`` body (RFC 9112 section 7.1)."""
    body = bytearray()
    while True:
        size_line = stream.readline()
        if not size_line:
            raise ValueError("chunked body ended before the last chunk")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(body)
        body += stream.read(size)
        stream.readline()  # the CRLF after each chunk


def _request_body(environ: dict[str, Any]) -> bytes:
    stream: IO[bytes] = environ["wsgi.input"]
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        return read_chunked(stream)
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return stream.read(length) if length else b""


def _cgi_env(environ: dict[str, Any], root: Path, length: int) -> dict[str, str]:
    env = {
        "GIT_PROJECT_ROOT": str(root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "REQUEST_METHOD": environ["REQUEST_METHOD"],
        "PATH_INFO": environ.get("PATH_INFO", ""),
        "QUERY_STRING": environ.get("QUERY_STRING", ""),
        "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
        "CONTENT_LENGTH": str(length),
        "REMOTE_ADDR": environ.get("REMOTE_ADDR", "127.0.0.1"),
        "REMOTE_USER": "kloop-test",  # enables receive-pack (push) without repo config
        "SERVER_PROTOCOL": environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
    }
    for key in ("HTTP_CONTENT_ENCODING", "HTTP_GIT_PROTOCOL"):
        if key in environ:
            env[key] = environ[key]
    return env


def _split_cgi_output(out: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, body = out.partition(b"\r\n\r\n")
    status, headers = "200 OK", []
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = value.strip()
        elif name:
            headers.append((name.strip(), value.strip()))
    return status, headers, body


class GitHttpApp:
    """The WSGI app: every request becomes one ``git http-backend`` CGI run.

    With ``auth`` (user, password), a request without that HTTP basic authorization gets 401,
    and every request's ``Authorization`` header is remembered in ``seen`` (for tests that
    check credentials reached git).
    """

    SLOW_SECONDS = 5.0

    def __init__(self, root: Path, auth: tuple[str, str] | None = None) -> None:
        self.root = root
        self.auth = auth
        self.seen: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request; one slower than ``SLOW_SECONDS`` is reported on stderr.

        A client that got no answer then knows whether the server was slow or never saw it.
        """
        started = time.monotonic()
        what = f"{time.strftime('%H:%M:%S')} {environ['REQUEST_METHOD']} "
        what += f"{environ.get('PATH_INFO', '')}?{environ.get('QUERY_STRING', '')}"
        answered = ["no answer"]

        def recording_start(status: str, headers: list[tuple[str, str]]) -> Any:
            answered[0] = status
            return start_response(status, headers)

        key = threading.get_ident()
        with _JOURNAL_LOCK:
            _IN_FLIGHT[key] = what
        try:
            return self._serve(environ, recording_start)
        finally:
            took = time.monotonic() - started
            with _JOURNAL_LOCK:
                _IN_FLIGHT.pop(key, None)
                _JOURNAL.append(f"{what} -> {answered[0]} in {took:.2f}s")
            if took > self.SLOW_SECONDS:
                print(f"git server: {what} took {took:.1f}s", file=sys.stderr, flush=True)

    def _authorized(self, environ: dict[str, Any]) -> bool:
        if self.auth is None:
            return True
        given = str(environ.get("HTTP_AUTHORIZATION", ""))
        self.seen.append(given)
        expected = base64.b64encode(":".join(self.auth).encode()).decode()
        return given == f"Basic {expected}"

    def _serve(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not self._authorized(environ):
            headers = [("WWW-Authenticate", 'Basic realm="kloop-test"'), ("Content-Length", "0")]
            start_response("401 Unauthorized", headers)
            return [b""]
        body = _request_body(environ)
        proc = subprocess.run(
            ["git", HTTP_BACKEND],
            input=body,
            capture_output=True,
            env=_cgi_env(environ, self.root, len(body)),
            check=False,
        )
        if proc.returncode != 0 and not proc.stdout:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [proc.stderr]
        status, headers, payload = _split_cgi_output(proc.stdout)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(payload))))
        start_response(status, headers)
        return [payload]


class GitServer:
    """Serves every bare repository under ``root`` at ``http://<host>:<port>/<name>.git``.

    ``host`` is loopback unless a test binds the pods' bridge address (pods reach the host
    there, nothing beyond this machine does); ``auth`` requires HTTP basic credentials.
    """

    def __init__(
        self, root: Path, host: str = "127.0.0.1", auth: tuple[str, str] | None = None
    ) -> None:
        self.root = root
        self.host = host
        self.app = GitHttpApp(root, auth)
        self._server = make_server(
            host,
            0,
            self.app,
            server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def create_repo(self, name: str) -> str:
        """A new empty bare repository (default branch ``main``); returns its clone URL."""
        path = self.root / f"{name}.git"
        subprocess.run(
            ["git", "init", "-q", "--bare", "--initial-branch=main", str(path)], check=True
        )
        return f"{self.url}/{name}.git"


@contextmanager
def git_server(
    root: Path, host: str = "127.0.0.1", auth: tuple[str, str] | None = None
) -> Iterator[GitServer]:
    """A running server for the duration of the block."""
    root.mkdir(parents=True, exist_ok=True)
    server = GitServer(root, host, auth)
    server.start()
    try:
        yield server
    finally:
        server.stop()
