"""A target that stops answering never holds a run: its pod is given up after a few passes.

The registry below stands in for the target cluster only (its TokenRequest times out); no
apiserver is mocked: ``_mint_or_give_up`` does not reach the management cluster before minting.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kloop.adapters import apply
from kloop.adapters.observe import Caches, Snapshot
from kloop.core.model import CreatePod, PodRequest, Role
from tests.unit.builders import observe

pytestmark = pytest.mark.unit


class DownTarget:
    """A cluster registry whose one target times out on every TokenRequest."""

    def __init__(self) -> None:
        self.calls = 0

    async def mint(self, cluster: str, seconds: int) -> Any:
        self.calls += 1
        raise TimeoutError(f"{cluster}: read timed out")


def test_a_target_that_cannot_mint_tokens_gives_up_its_pod_after_three_passes() -> None:
    caches = Caches()
    registry = DownTarget()
    caches.clusters = registry  # type: ignore[assignment]
    run = {
        "apiVersion": "kloop.dev/v1alpha1",
        "kind": "LoopRun",
        "metadata": {"name": "r", "namespace": "ns", "uid": "uid-1"},
    }
    snap = Snapshot(observe(), run, None)
    action = CreatePod(PodRequest("r-s0-prod-i1-maker", Role.MAKER, 1, "s", "prod"))
    manifest: dict[str, Any] = {"metadata": {"annotations": {}}, "spec": {}}

    async def attempt() -> str | None:
        return await apply._mint_or_give_up(None, snap, action, caches, manifest)  # type: ignore[arg-type]

    for _ in range(apply.MINT_ATTEMPTS - 1):
        with pytest.raises(TimeoutError):
            asyncio.run(attempt())
    assert asyncio.run(attempt()) is None
    rejected = caches.rejected[("uid-1", "r-s0-prod-i1-maker")]
    assert "cluster 'prod' unavailable: no token after 3 tries" in rejected
    assert registry.calls == apply.MINT_ATTEMPTS
