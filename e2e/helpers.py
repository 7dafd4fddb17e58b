"""Small waits and builders the e2e tests share (polling the real API, never sleeping blind)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kubernetes import client

T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60, every: float = 0.5
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def run_pod(
    core: client.CoreV1Api, namespace: str, pod: client.V1Pod, timeout: float = 180
) -> client.V1Pod:
    """Create ``pod`` and return it once it has Succeeded or Failed (restartPolicy Never)."""
    core.create_namespaced_pod(namespace, pod)
    name = pod.metadata.name

    def finished() -> client.V1Pod | None:
        p = core.read_namespaced_pod(name, namespace)
        return p if p.status.phase in ("Succeeded", "Failed") else None

    return wait_for(f"pod {name} to finish", finished, timeout)
