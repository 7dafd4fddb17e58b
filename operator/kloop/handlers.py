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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from kloop import loops, malloc, shards
from kloop.adapters import errors
from kloop.adapters.apply import Gone, PermanentWriteError, apply
from kloop.adapters.egress import EgressGuard
from kloop.adapters.kube import Kube
from kloop.adapters.observe import Caches, Snapshot, observe
from kloop.adapters.store import Store
from kloop.api import GROUP, VERSION
from kloop.core import names
from kloop.core.decide import decide
from kloop.metrics import RECONCILE, RUNS, error_reason, record_reconcile_error

log = logging.getLogger("kloop.handlers")

ERROR_BACKOFF_MAX = 60.0
API_THREADS = 32
"""Threads for API calls (and HTTP connections to the apiserver): calls in flight at once."""


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
_by_name: dict[tuple[str, str], str] = {}
"""(namespace, name) -> uid of the driver using that name: wakes by name without a scan."""


class NoDiffBase(kopf.DiffBaseStorage):
    """No last-handled state at all: kloop has only event handlers, which never diff.

    kopf would otherwise deep-copy every event's whole body (status included, which can be
    large) to compute an "essence" that only change handlers use: measured here as the largest
    share of the operator's CPU per event. Nothing is stored on the objects either.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        """An empty essence, without copying the body."""
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """Nothing was stored."""
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        """Store nothing."""


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Keep any kopf bookkeeping in status (never annotations) and build the API client."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    # watch only kloop's pods, filtered by the apiserver (not every pod of the cluster)
    settings.watching.label_selectors["v1", "pods"] = names.LABEL_RUN
    # kopf waits this long after an object's event for more before handling it (default 0.1 s):
    # every step of a run would wait it out. The handlers only store the body and wake a task.
    settings.batching.batch_window = 0.01
    shard = shards.configure(settings, memo)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # every API call runs in a thread (the client is synchronous): the default pool has
    # cpu + 4 threads, which queued calls at 100 concurrent runs; the HTTP pool matches it
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="kloop-api")
    )
    memo.kube = Kube()
    shards.identify(memo.kube, shard)
    # the egress guard comes from main's flags (--allow-egress-cidr); strict when run otherwise
    memo.caches = Caches(
        egress=getattr(memo, "egress", None) or EgressGuard(),
        wake=_wake,
        store=Store(on_run_change=loops.wake_for_run),
    )
    # drift in a target is measured as its agent ServiceAccount: a Loop learns no more there
    memo.caches.target_client = memo.caches.clusters.agent_client
    if getattr(memo, "trim", None) is None:  # once, even if kopf retries this handler
        memo.trim = asyncio.create_task(malloc.trim_forever(), name="malloc trim")


@kopf.on.cleanup()
async def stop_drivers(memo: Any, **_: Any) -> None:
    """Cancel every run's task and pending notification on shutdown; status is the resume point."""
    for driver in list(_drivers.values()):
        driver.task.cancel()
    for driver in list(_drivers.values()):
        with contextlib.suppress(asyncio.CancelledError):
            await driver.task
    _drivers.clear()
    _by_name.clear()
    trim = getattr(memo, "trim", None)
    if trim is not None:
        trim.cancel()
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
    first = True
    while True:
        driver = _drivers[uid]
        driver.wake.clear()
        started = time.monotonic()
        try:
            snap = await observe(kube, namespace, name, caches)
            if snap is None or snap.observed.uid != uid:
                RUNS.forget(uid)
                caches.forget(uid)
                return  # deleted (a re-created run of the same name has its own task)
            decision = decide(snap.observed)
            applied = await apply(kube, snap, decision, caches)
            RECONCILE.observe(time.monotonic() - started)
            if not applied:
                log.info("status conflict, observing again", extra=ctx)
                caches.store.mark_stale(namespace, name)  # read it for real next time
                caches.store.unseed(namespace, name)  # and its pods
                continue
        except asyncio.CancelledError:
            raise
        except Gone:
            log.info("run deleted meanwhile", extra=ctx)
            caches.store.forget_run(namespace, name, uid)
            caches.forget(uid)
            RUNS.forget(uid)
            return
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
            caches.store.unseed(namespace, name)  # list its pods for real on the next pass
            delay = min(ERROR_BACKOFF_MAX, 2.0**retries.failures)
            log.warning("reconcile failed, retrying in %.0fs: %s", delay, err, extra=ctx)
            if snap is not None:
                await errors.report_retry(kube, snap, err, retries.failures, retries.reported)
                retries.reported = errors.describe(err)
            await asyncio.sleep(delay)
            continue
        retries = _Retries()
        changed = bool(decision.actions) or decision.status.phase != snap.observed.status.phase
        # a pass that changes nothing (a pod event, a resync) is DEBUG: at INFO, one log line per
        # pass was a measurable share of the operator's CPU. A task's first pass is always INFO:
        # after a restart, the log shows every run was looked at again.
        log.log(
            logging.INFO if changed or first else logging.DEBUG,
            decision.why or "reconciled",
            extra={
                **ctx,
                "phase": decision.status.phase.value if decision.status.phase else None,
                "iteration": decision.status.iteration,
                "actions": ",".join(type(a).__name__ for a in decision.actions),
            },
        )
        first = False
        if decision.status.phase is not None and decision.status.phase.finished:
            caches.cancel_queries(uid)  # no verdict is needed any more, even while tearing down
        if decision.done:
            caches.forget(uid)
            caches.store.forget_pods(namespace, name)
            return
        requeue = decision.requeue_after
        del decision  # a sleeping task holds only what a retry report needs: the last snapshot
        snap.run = caches.store.settled(snap.run)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(driver.wake.wait(), timeout=requeue)


@kopf.on.event(GROUP, VERSION, "loopruns")
async def run_event(
    *,
    type: str | None,
    event: Any,
    name: str,
    namespace: str | None,
    uid: str,
    spec: Any,
    memo: Any,
    **_: Any,
) -> None:
    """Keep the run in the store; start a task for it (new, or found at startup); wake it.

    Finished runs get one pass too: it completes whatever a crash interrupted (memory, pods
    left running) and ends at once. A change the run's Loop cares about (phase, start, end,
    memory recorded) also wakes the Loop (kloop/loops.py), which keeps its status and history.
    """
    store: Store = memo.caches.store
    driver = _drivers.get(uid)
    if type == "DELETED":
        store.forget_run(namespace or "", name, uid)  # wakes its Loop (see configure)
        if driver is not None:
            driver.task.cancel()
        memo.caches.forget(uid)
        RUNS.forget(uid)  # its series end at the next scrape
        return
    body = event.get("object") if isinstance(event, dict) else None
    # not newer: the run's own status write coming back as an event, nothing new in it
    fresh = body is None or store.put_run(body)
    if driver is not None and not driver.task.done():
        if fresh:
            driver.wake.set()
        return
    if not fresh:
        return  # a finished run's own last write coming back: it had its pass
    task = asyncio.create_task(
        drive(memo.kube, memo.caches, namespace or "", name, uid), name=f"run {namespace}/{name}"
    )
    _drivers[uid] = _Driver(task, namespace or "", name)
    _by_name[(namespace or "", name)] = uid
    task.add_done_callback(functools.partial(_forget, uid, name))


def _wake(namespace: str, name: str) -> None:
    """Wake a run's task (an oracle query it started has ended)."""
    driver = _drivers.get(_by_name.get((namespace, name), ""))
    if driver is not None:
        driver.wake.set()


def _forget(uid: str, name: str, task: asyncio.Task[None]) -> None:
    driver = _drivers.get(uid)
    if driver is not None and driver.task is task:
        del _drivers[uid]
        if _by_name.get((driver.namespace, driver.name)) == uid:
            del _by_name[(driver.namespace, driver.name)]
    if not task.cancelled() and task.exception() is not None:
        log.error("run task crashed: %s", task.exception(), extra={"run": name})


@kopf.on.event("", "v1", "pods", labels={names.LABEL_RUN: kopf.PRESENT})
async def pod_event(
    *, type: str | None, event: Any, meta: Any, namespace: str | None, memo: Any, **_: Any
) -> None:
    """A run's pod changed: store it, then wake the run that owns it, or the run using its name.

    A deleted run's pods linger until garbage collection; a run re-created under the same name
    waits for them to go (their names are its names), so their events wake it too.
    """
    body = event.get("object") if isinstance(event, dict) else None
    if body is not None:
        if type == "DELETED":
            memo.caches.store.delete_pod(body)
        else:
            memo.caches.store.put_pod(body)
    uids = {o.get("uid") for o in meta.get("ownerReferences") or []}
    run = str((meta.get("labels") or {}).get(names.LABEL_RUN) or "")
    uids.add(_by_name.get((namespace or "", run)))
    for uid in uids:
        driver = _drivers.get(uid or "")
        if driver is not None:
            driver.wake.set()
