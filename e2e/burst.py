"""A bounded burst of bad webhook deliveries, as a separate process: ``python -m e2e.burst``.

Sends ``--count`` requests spread evenly over ``--seconds`` (never more, never longer: each is
started at its slot, at most ``--concurrency`` at a time) to a receiver on loopback, cycling
through an unknown path, an unsigned and a wrongly signed delivery on a real path, and an
oversized one (a Content-Length of 2 MiB, of which a few bytes are sent). Prints one JSON line:
when it started and ended (epoch seconds), how many requests it sent, and the status codes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from urllib.parse import urlsplit

BODY = b'{"ref": "refs/tags/v9.9.9", "repository": {"full_name": "evil/app"}}'


def _requests(path: str, host: str) -> list[bytes]:
    head = f"Host: {host}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    push = "X-GitHub-Event: push\r\n"
    return [
        f"POST /hook/{'0' * 64} HTTP/1.1\r\n{head}Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY,
        f"POST {path} HTTP/1.1\r\n{head}{push}Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY,
        f"POST {path} HTTP/1.1\r\n{head}{push}X-Hub-Signature-256: sha256={'ab' * 32}\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY,
        f"POST {path} HTTP/1.1\r\n{head}{push}Content-Length: 2097152\r\n\r\n".encode() + BODY,
    ]


async def _one(host: str, port: int, request: bytes, counts: Counter[str]) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        status = (await reader.readline()).split(b" ")
        counts[status[1].decode() if len(status) > 1 else "none"] += 1
        writer.close()
    except OSError as err:
        counts[type(err).__name__] += 1


async def burst(url: str, count: int, seconds: float, concurrency: int) -> dict[str, object]:
    """Send the burst; its summary."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = _requests(parts.path, f"{host}:{port}")
    counts: Counter[str] = Counter()
    started = time.time()
    deadline = time.monotonic() + seconds
    sent = 0
    gate = asyncio.Semaphore(concurrency)

    async def guarded(request: bytes) -> None:
        async with gate:
            await _one(host, port, request, counts)

    tasks = []
    begin = time.monotonic()
    while sent < count and time.monotonic() < deadline:
        await asyncio.sleep(max(0.0, begin + sent * seconds / count - time.monotonic()))
        tasks.append(asyncio.create_task(guarded(requests[sent % len(requests)])))
        sent += 1
    await asyncio.wait_for(
        asyncio.gather(*tasks), timeout=max(1.0, deadline - time.monotonic()) + 5
    )
    return {"started": started, "ended": time.time(), "sent": sent, "statuses": dict(counts)}


def main() -> None:
    """Parse the bounds, run the burst, print the summary."""
    parser = argparse.ArgumentParser(prog="e2e.burst", description=__doc__)
    parser.add_argument("--url", required=True, help="a real receiver URL (its path is used)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the burst only targets loopback")
    summary = asyncio.run(burst(args.url, args.count, args.seconds, args.concurrency))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
