"""kopf wiring only: for each LoopRun, observe -> decide -> apply, woken by its pods' events.

Each unfinished LoopRun gets one asyncio task (so its reconciles never overlap), started by kopf's
event handler on LoopRuns — also for every existing run when the operator starts — and woken by
events on the run and its pods. Event handlers write nothing on the objects: no annotations, and
no finalizer, so a LoopRun can always be deleted, even with the operator gone (its pods are then
garbage-collected through their ownerReferences). See docs/gitops.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from kloop.adapters.apply import apply
from kloop.adapters.egress import EgressGuard
from kloop.adapters.kube import Kube
from kloop.adapters.observe import Caches, observe
from kloop.api import GROUP, VERSION
from kloop.core import names
from kloop.core.decide import decide
from kloop.metrics import RECONCILE

log = logging.getLogger("kloop.handlers")

ERROR_BACKOFF_MAX = 60.0


@dataclass
class _Driver:
    """The task driving one LoopRun and the event that wakes it."""

    task: asyncio.Task[None]
    wake: asyncio.Event = field(default_factory=asyncio.Event)


_drivers: dict[tuple[str, str], _Driver] = {}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Keep any kopf bookkeeping in status (never annotations) and build the API client."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.posting.level = logging.WARNING
    # watch only kloop's pods, filtered by the apiserver (not every pod of the cluster)
    settings.watching.label_selectors["v1", "pods"] = names.LABEL_RUN
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo.kube = Kube()
    # the egress guard comes from main's flags (--allow-egress-cidr); strict when run otherwise
    memo.caches = Caches(egress=getattr(memo, "egress", None) or EgressGuard(), wake=_wake)


@kopf.on.cleanup()
async def stop_drivers(**_: Any) -> None:
    """Cancel every run's task on shutdown; the next operator resumes from status."""
    for driver in list(_drivers.values()):
        driver.task.cancel()
    for driver in list(_drivers.values()):
        with contextlib.suppress(asyncio.CancelledError):
            await driver.task
    _drivers.clear()


async def drive(kube: Kube, caches: Caches, namespace: str, name: str) -> None:
    """Reconcile one LoopRun until it is finished or gone; API errors back off and retry."""
    ctx = {"run": name, "namespace": namespace}
    failures = 0
    while True:
        driver = _drivers[(namespace, name)]
        driver.wake.clear()
        try:
            started = time.monotonic()
            snap = await observe(kube, namespace, name, caches)
            if snap is None:
                return
            decision = decide(snap.observed)
            applied = await apply(kube, snap, decision, caches)
            RECONCILE.observe(time.monotonic() - started)
            if not applied:
                log.info("status conflict, observing again", extra=ctx)
                continue
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a run must survive API hiccups
            failures += 1
            delay = min(ERROR_BACKOFF_MAX, 2.0**failures)
            log.warning("reconcile failed, retrying in %.0fs: %s", delay, err, extra=ctx)
            await asyncio.sleep(delay)
            continue
        failures = 0
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
            caches.forget(snap.observed.uid)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(driver.wake.wait(), timeout=decision.requeue_after)


@kopf.on.event(GROUP, VERSION, "loopruns")
async def run_event(
    *, type: str | None, name: str, namespace: str | None, uid: str, memo: Any, **_: Any
) -> None:
    """Start a task for a run (new, or found at startup); wake it on changes.

    Finished runs get one pass too: it completes whatever a crash interrupted (memory, the
    Loop's columns) and ends at once.
    """
    key = (namespace or "", name)
    driver = _drivers.get(key)
    if type == "DELETED":
        if driver is not None:
            driver.task.cancel()
        memo.caches.forget(uid)
        return
    if driver is not None and not driver.task.done():
        driver.wake.set()
        return
    task = asyncio.create_task(drive(memo.kube, memo.caches, key[0], name), name=f"run {key}")
    _drivers[key] = _Driver(task)
    task.add_done_callback(functools.partial(_forget, key))


def _wake(namespace: str, name: str) -> None:
    """Wake a run's task (an oracle query it started has ended)."""
    driver = _drivers.get((namespace, name))
    if driver is not None:
        driver.wake.set()


def _forget(key: tuple[str, str], task: asyncio.Task[None]) -> None:
    driver = _drivers.get(key)
    if driver is not None and driver.task is task:
        del _drivers[key]
    if not task.cancelled() and task.exception() is not None:
        log.error("run task crashed: %s", task.exception(), extra={"run": key[1]})


@kopf.on.event("", "v1", "pods", labels={names.LABEL_RUN: kopf.PRESENT})
async def pod_event(*, labels: Any, namespace: str | None, **_: Any) -> None:
    """A run's pod changed: wake that run's task."""
    driver = _drivers.get((namespace or "", labels.get(names.LABEL_RUN) or ""))
    if driver is not None:
        driver.wake.set()
