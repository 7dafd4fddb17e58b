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

from kloop import loops, shards
from kloop.adapters import errors
from kloop.adapters.apply import PermanentWriteError, apply
from kloop.adapters.egress import EgressGuard
from kloop.adapters.kube import Kube
from kloop.adapters.observe import Caches, Snapshot, observe
from kloop.api import GROUP, VERSION
from kloop.core import names
from kloop.core.decide import decide
from kloop.metrics import RECONCILE, RUNS, error_reason, record_reconcile_error

log = logging.getLogger("kloop.handlers")

ERROR_BACKOFF_MAX = 60.0


@dataclass
class _Driver:
    """The task driving one LoopRun and the event that wakes it."""

    task: asyncio.Task[None]
    namespace: str
    name: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)


# Keyed by the run's uid: a run deleted and re-created under the same name (kubectl replace
# --force) is a new object and gets its own task, whatever the old task is still doing.
_drivers: dict[str, _Driver] = {}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Keep any kopf bookkeeping in status (never annotations) and build the API client."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.posting.level = logging.WARNING
    # watch only kloop's pods, filtered by the apiserver (not every pod of the cluster)
    settings.watching.label_selectors["v1", "pods"] = names.LABEL_RUN
    shard = shards.configure(settings, memo)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo.kube = Kube()
    shards.identify(memo.kube, shard)
    # the egress guard comes from main's flags (--allow-egress-cidr); strict when run otherwise
    memo.caches = Caches(egress=getattr(memo, "egress", None) or EgressGuard(), wake=_wake)
    # drift in a target is measured as its agent ServiceAccount: a Loop learns no more there
    memo.caches.target_client = memo.caches.clusters.agent_client


@kopf.on.cleanup()
async def stop_drivers(memo: Any, **_: Any) -> None:
    """Cancel every run's task and pending notification on shutdown; status is the resume point."""
    for driver in list(_drivers.values()):
        driver.task.cancel()
    for driver in list(_drivers.values()):
        with contextlib.suppress(asyncio.CancelledError):
            await driver.task
    _drivers.clear()
    caches = getattr(memo, "caches", None)
    if caches is not None:
        caches.clusters.close()  # the target clusters' connection pools
        await caches.notifier.close()


@dataclass
class _Retries:
    """Consecutive failed passes of one run, and the last error reported for it."""

    failures: int = 0
    reported: str = ""


async def drive(kube: Kube, caches: Caches, namespace: str, name: str, uid: str) -> None:
    """Reconcile one LoopRun until it is finished or gone.

    Transient errors back off and are shown on the run (conditions, one Event per distinct
    error); a write the apiserver refuses for good fails the run with that reason.
    """
    ctx = {"run": name, "namespace": namespace}
    retries = _Retries()
    snap: Snapshot | None = None
    while True:
        driver = _drivers[uid]
        driver.wake.clear()
        started = time.monotonic()
        try:
            snap = await observe(kube, namespace, name, caches)
            if snap is None or snap.observed.uid != uid:
                RUNS.forget(uid)
                return  # deleted (a re-created run of the same name has its own task)
            decision = decide(snap.observed)
            applied = await apply(kube, snap, decision, caches)
            RECONCILE.observe(time.monotonic() - started)
            if not applied:
                log.info("status conflict, observing again", extra=ctx)
                continue
        except asyncio.CancelledError:
            raise
        except PermanentWriteError as err:
            RECONCILE.observe(time.monotonic() - started)
            record_reconcile_error("permanent", err.reason.value)
            log.error("write refused for good: %s", err.message, extra=ctx)
            if uid in caches.write_rejected and snap is not None:
                await errors.mark_failed(kube, snap, err.reason, err.message)
                return  # even the failure could not be written in full: stop here
            caches.write_rejected[uid] = (err.reason.value, err.message)
            continue
        except Exception as err:  # noqa: BLE001 - a run must survive API hiccups
            RECONCILE.observe(time.monotonic() - started)
            record_reconcile_error("transient", error_reason(err))
            retries.failures += 1
            delay = min(ERROR_BACKOFF_MAX, 2.0**retries.failures)
            log.warning("reconcile failed, retrying in %.0fs: %s", delay, err, extra=ctx)
            if snap is not None:
                await errors.report_retry(kube, snap, err, retries.failures, retries.reported)
                retries.reported = errors.describe(err)
            await asyncio.sleep(delay)
            continue
        retries = _Retries()
        log.info(
            decision.why or "reconciled",
            extra={
                **ctx,
                "phase": decision.status.phase.value if decision.status.phase else None,
                "iteration": decision.status.iteration,
                "actions": ",".join(type(a).__name__ for a in decision.actions),
            },
        )
        if decision.status.phase is not None and decision.status.phase.finished:
            caches.cancel_queries(uid)  # no verdict is needed any more, even while tearing down
        if decision.done:
            caches.forget(uid)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(driver.wake.wait(), timeout=decision.requeue_after)


@kopf.on.event(GROUP, VERSION, "loopruns")
async def run_event(
    *,
    type: str | None,
    name: str,
    namespace: str | None,
    uid: str,
    spec: Any,
    memo: Any,
    **_: Any,
) -> None:
    """Start a task for a run (new, or found at startup); wake it on changes.

    Finished runs get one pass too: it completes whatever a crash interrupted (memory, pods
    left running) and ends at once. Every event also wakes the run's Loop (kloop/loops.py),
    which keeps the Loop's status and history.
    """
    loop_ref = ((spec or {}).get("loopRef") or {}).get("name")
    if loop_ref:
        loops.wake(namespace or "", loop_ref)
    driver = _drivers.get(uid)
    if type == "DELETED":
        if driver is not None:
            driver.task.cancel()
        memo.caches.forget(uid)
        RUNS.forget(uid)  # its series end at the next scrape
        return
    if driver is not None and not driver.task.done():
        driver.wake.set()
        return
    task = asyncio.create_task(
        drive(memo.kube, memo.caches, namespace or "", name, uid), name=f"run {namespace}/{name}"
    )
    _drivers[uid] = _Driver(task, namespace or "", name)
    task.add_done_callback(functools.partial(_forget, uid, name))


def _wake(namespace: str, name: str) -> None:
    """Wake a run's task (an oracle query it started has ended)."""
    for driver in _drivers.values():
        if (driver.namespace, driver.name) == (namespace, name):
            driver.wake.set()


def _forget(uid: str, name: str, task: asyncio.Task[None]) -> None:
    driver = _drivers.get(uid)
    if driver is not None and driver.task is task:
        del _drivers[uid]
    if not task.cancelled() and task.exception() is not None:
        log.error("run task crashed: %s", task.exception(), extra={"run": name})


@kopf.on.event("", "v1", "pods", labels={names.LABEL_RUN: kopf.PRESENT})
async def pod_event(*, meta: Any, namespace: str | None, **_: Any) -> None:
    """A run's pod changed: wake the run that owns it, or the run now using its name.

    A deleted run's pods linger until garbage collection; a run re-created under the same name
    waits for them to go (their names are its names), so their events wake it too.
    """
    owners = {o.get("uid") for o in meta.get("ownerReferences") or []}
    run = (meta.get("labels") or {}).get(names.LABEL_RUN)
    for uid, driver in _drivers.items():
        if uid in owners or (driver.namespace == namespace and driver.name == run):
            driver.wake.set()
