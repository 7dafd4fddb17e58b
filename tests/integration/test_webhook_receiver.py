"""The webhook receiver's refusals on a real socket, without a cluster: none of them needs the API.

A chunked body (no Content-Length) that passes 1 MiB is refused as soon as it does, which the
e2e test (Content-Length only) does not cover.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from e2e.procs import free_port

from kloop.adapters.receiver import Hook, Receiver, Registry
from kloop.api.loop import WebhookProvider
from kloop.core.webhooks import MAX_BODY_BYTES, sign

pytestmark = pytest.mark.integration


async def _status(port: int, head: bytes, chunks: list[bytes]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    try:
        for chunk in chunks:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        pass  # the receiver may close once it has answered
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return int(line.split(b" ")[1])


def _serve(*requests: tuple[bytes, list[bytes]]) -> list[int]:
    async def main() -> list[int]:
        registry = Registry()
        # the Event of the signed, malformed delivery fails without an API: logged only
        meta = {"name": "app", "namespace": "ns", "uid": "u"}
        loop: dict[str, Any] = {"apiVersion": "v", "kind": "Loop", "metadata": meta}
        hook = Hook("ns", "app", "release", WebhookProvider.GITHUB, "tok", loop)
        registry.set_loop("ns", "app", {"/hook/abc": hook})
        kube: Any = None  # refusals never reach the API (Events are best effort)
        receiver = Receiver(kube, registry)
        port = free_port()
        await receiver.start("127.0.0.1", port)
        try:
            return [await _status(port, head, chunks) for head, chunks in requests]
        finally:
            await receiver.stop()

    return asyncio.run(main())


def _head(path: str = "/hook/abc", *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Transfer-Encoding: chunked", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_chunked_body_over_one_mib_is_refused_and_small_bad_ones_get_their_codes() -> None:
    body = b'{"ref": "refs/tags/v1.0.0"}'
    piece = b"a" * 65536
    over = [piece] * (MAX_BODY_BYTES // len(piece) + 2)
    assert _serve(
        (_head(), over),
        (_head(), [piece] * (MAX_BODY_BYTES // len(piece))),  # exactly 1 MiB: read, then 401
        (_head("/hook/nope"), [body]),
        (_head("/hook/abc", f"X-Hub-Signature-256: {sign('other', body)}"), [body]),
        (_head("/hook/abc", f"X-Hub-Signature-256: {sign('tok', b'x')}"), [b"x"]),
    ) == [413, 401, 404, 403, 400]
