"""kopf wiring only: for each LoopRun, observe -> decide -> apply, woken by its pods' events.

A LoopRun gets one daemon (one coroutine), so its reconciles never overlap. Pod and LoopRun events
only wake that coroutine; they write nothing on the objects (GitOps-clean, see docs/gitops.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from kloop.adapters.apply import apply
from kloop.adapters.kube import Kube
from kloop.adapters.observe import OracleCache, observe
from kloop.api import GROUP, VERSION
from kloop.core import names
from kloop.core.decide import decide
from kloop.core.model import EvaluateOracle

log = logging.getLogger("kloop.handlers")

FINALIZER = "kloop.dev/finalizer"
_wakers: dict[tuple[str, str], asyncio.Event] = {}


def _waker(namespace: str, name: str) -> asyncio.Event:
    return _wakers.setdefault((namespace, name), asyncio.Event())


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Keep kopf's bookkeeping in status (not annotations) and name the finalizer ours."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo.kube = Kube()
    memo.oracles = {}


@kopf.daemon(GROUP, VERSION, "loopruns", cancellation_timeout=5.0)
async def run_loop(
    *, name: str, namespace: str | None, stopped: kopf.DaemonStopped, memo: Any, **_: Any
) -> None:
    """Drive one LoopRun until it is finished (or deleted, or the operator stops)."""
    assert namespace is not None, "LoopRuns are namespaced"
    kube: Kube = memo.kube
    cache: OracleCache = memo.oracles
    wake = _waker(namespace, name)
    ctx = {"run": name, "namespace": namespace}
    try:
        while not stopped:
            wake.clear()
            snap = await observe(kube, namespace, name, cache)
            if snap is None:
                return
            decision = decide(snap.observed)
            if not await apply(kube, snap, decision, cache):
                log.info("status conflict, observing again", extra=ctx)
                continue
            log.info(
                decision.why or "reconciled",
                extra={
                    **ctx,
                    "phase": decision.status.phase.value if decision.status.phase else None,
                    "iteration": decision.status.iteration,
                    "actions": ",".join(type(a).__name__ for a in decision.actions),
                },
            )
            if decision.done:
                return
            if any(isinstance(a, EvaluateOracle) for a in decision.actions):
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=decision.requeue_after)
    finally:
        _wakers.pop((namespace, name), None)


@kopf.on.event("", "v1", "pods", labels={names.LABEL_RUN: kopf.PRESENT})
async def pod_changed(*, labels: Any, namespace: str | None, **_: Any) -> None:
    """A run's pod changed: wake that run's daemon."""
    _wake(namespace, labels.get(names.LABEL_RUN))


@kopf.on.event(GROUP, VERSION, "loopruns")
async def run_changed(*, name: str, namespace: str | None, **_: Any) -> None:
    """The run itself changed (an approval or abort annotation): wake its daemon."""
    _wake(namespace, name)


def _wake(namespace: str | None, run: str | None) -> None:
    waker = _wakers.get((namespace or "", run or ""))
    if waker is not None:
        waker.set()
