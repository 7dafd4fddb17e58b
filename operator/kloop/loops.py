"""kopf wiring for Loops: schedules, history limits and Loop.status, one task per Loop.

Each Loop gets one asyncio task (keyed by uid, like the run drivers in handlers.py), started by
kopf's event handler on Loops (also for every Loop when the operator starts), woken by the Loop's
events and by the changes of its LoopRuns that it reads (handlers.py calls ``wake``), and
otherwise asleep until the next scheduled time. A pass reads the Loop and its runs from the watch
store (adapters/store.py), decides (``kloop.core.loops``), then: posts Events, starts the due
scheduled run (``adapters.launch``), deletes runs past the history limits and merge-patches the
status fields it owns. It is the one writer of those fields; it never writes the spec, nor
``status.triggers``. Run names are deterministic from the scheduled time, so a pass repeated
after a crash finds the run it created instead of creating another.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kloop.adapters import events
from kloop.adapters.kube import Json, Kube, is_status
from kloop.adapters.launch import get_loop, launch
from kloop.adapters.store import RESEED_SECONDS, Store
from kloop.api import GROUP, VERSION
from kloop.api.conditions import Reason
from kloop.api.loop import LoopSpec
from kloop.core.loops import (
    LoopDecision,
    ObservedLoop,
    ObservedLoopRun,
    decide_loop,
    status_patch,
)

log = logging.getLogger("kloop.loops")

ERROR_BACKOFF_MAX = 60.0
COALESCE_SECONDS = 0.5
"""After a wake, wait this long so a burst of run events makes one pass, not dozens."""


@dataclass
class _LoopDriver:
    task: asyncio.Task[None]
    namespace: str
    name: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)


_loops: dict[str, _LoopDriver] = {}
_by_name: dict[tuple[str, str], str] = {}
"""(namespace, name) -> uid of the Loop's task: a run's event wakes it without a scan."""


def wake(namespace: str, name: str) -> None:
    """Wake the task of Loop ``namespace/name`` (one of its runs changed)."""
    driver = _loops.get(_by_name.get((namespace, name), ""))
    if driver is not None:
        driver.wake.set()


def wake_for_run(before: Json | None, after: Json | None) -> None:
    """Wake a run's Loop when a stored run changed in a way the Loop reads.

    Called by the store for a watch event and for the answer to kloop's own write alike (the
    write's own event then brings nothing newer and wakes nobody).
    """
    run = after or before
    if run is None or not run_changed_for_loop(before, after):
        return
    loop = ((run.get("spec") or {}).get("loopRef") or {}).get("name")
    if loop:
        wake(run["metadata"].get("namespace") or "", loop)


def run_changed_for_loop(before: Json | None, after: Json | None) -> bool:
    """Whether a run's change matters to its Loop: anything ``ObservedLoopRun`` reads.

    Most run events are a pod created or a verdict recorded; only a new run, a new phase, its
    end, its memory catching up or its ownership change the Loop's status or history.
    """
    if before is None or after is None:
        return True
    if (before["metadata"].get("ownerReferences") or []) != (
        after["metadata"].get("ownerReferences") or []
    ):
        return True
    return ObservedLoopRun.from_json(before, "") != ObservedLoopRun.from_json(after, "")


def observe_loop(loop: Json, runs: list[Json], now: datetime) -> ObservedLoop:
    """The pure snapshot of one Loop and its runs."""
    meta = loop["metadata"]
    spec: LoopSpec | None = None
    invalid = None
    try:
        spec = LoopSpec.model_validate(loop.get("spec") or {})
    except ValidationError as err:
        invalid = f"the Loop's spec is invalid: {err.errors()[0].get('msg', err)}"[:1024]
    return ObservedLoop(
        name=meta["name"],
        uid=meta["uid"],
        generation=int(meta.get("generation") or 0),
        created=meta.get("creationTimestamp") or "",
        spec=spec,
        status=loop.get("status") or {},
        runs=[ObservedLoopRun.from_json(r, meta["uid"]) for r in runs],
        now=now,
        invalid=invalid,
    )


async def _delete_run(kube: Kube, loop: Json, name: str, why: str) -> None:
    """Delete a finished run (its pods follow by garbage collection); gone already is fine."""
    meta = loop["metadata"]
    try:
        await kube.call(
            kube.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            meta["namespace"],
            "loopruns",
            name,
            propagation_policy="Background",
        )
    except Exception as err:
        if is_status(err, 404):
            return
        raise
    await events.record(kube, loop, "Normal", Reason.RUN_DELETED, f"{name} deleted: {why}")


async def apply_loop(kube: Kube, store: Store, loop: Json, decision: LoopDecision) -> None:
    """Carry out one pass's decision: Events, the scheduled run, pruning, then status."""
    meta = loop["metadata"]
    for event in decision.events:
        await events.record(kube, loop, event.type, event.reason, event.message)
    if decision.start is not None:
        await launch(kube, loop, decision.start)  # before lastScheduleTime: never lost, never twice
    patch = status_patch(loop.get("status") or {}, decision.status)
    if patch:
        store.put_loop(
            await kube.patch_status(meta["namespace"], "loops", meta["name"], {"status": patch})
        )
    for name in decision.delete:  # last: a delete that keeps failing holds back no status
        await _delete_run(kube, loop, name, "past the Loop's history limit")


async def _loop_and_runs(
    store: Store, kube: Kube, namespace: str, name: str, read_for_real: bool
) -> tuple[Json | None, list[Json]]:
    """The Loop and its runs from the watch store.

    The Loop is read for real when it is not there, or when asked (every ``RESEED_SECONDS``: a
    watch gap can hide a deletion).
    """
    loop = None if read_for_real else store.loops.get((namespace, name))
    if loop is None:
        loop = await get_loop(kube, namespace, name)  # only its 404 ends the task
        if loop is None:
            store.forget_loop(namespace, name)
            return None, []
        store.put_loop(loop)
    return loop, store.runs_of(namespace, name)


async def _loop_pass(
    kube: Kube, store: Store, namespace: str, name: str, uid: str, recheck: bool
) -> float | None:
    """One pass; the seconds until the next one, None when the Loop is gone.

    A function of its own so that what a pass builds (the observed Loop, its parsed spec, the
    decision) is freed before the task sleeps: with 1,000 Loops, sleeping tasks holding them
    were a measured share of the operator's memory (docs/BENCHMARKS-scale.md).
    """
    loop, runs = await _loop_and_runs(store, kube, namespace, name, recheck)
    if loop is None or loop["metadata"]["uid"] != uid:
        return None
    decision = decide_loop(observe_loop(loop, runs, datetime.now(UTC)))
    await apply_loop(kube, store, loop, decision)
    log.debug(decision.why or "loop reconciled", extra={"loop": name, "namespace": namespace})
    after = decision.requeue_after
    return RESEED_SECONDS if after is None else min(after, RESEED_SECONDS)


async def drive_loop(kube: Kube, store: Store, namespace: str, name: str, uid: str) -> None:
    """Pass after pass for one Loop until it is gone; API errors back off and retry."""
    ctx = {"loop": name, "namespace": namespace}
    failures = 0
    checked = time.monotonic()
    while True:
        driver = _loops[uid]
        driver.wake.clear()
        requeue: float | None = None
        try:
            recheck = time.monotonic() - checked >= RESEED_SECONDS
            requeue = await _loop_pass(kube, store, namespace, name, uid, recheck)
            if recheck:
                checked = time.monotonic()
            if requeue is None:
                return  # deleted (or re-created: the new Loop has its own task)
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a Loop must survive API hiccups
            if is_status(err, 404):  # its status patch: deleted while a watch gap hid it
                store.forget_loop(namespace, name, uid)
                return
            failures += 1
            requeue = min(ERROR_BACKOFF_MAX, 2.0**failures)
            log.warning("loop pass failed, retrying in %.0fs: %s", requeue, err, extra=ctx)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(driver.wake.wait(), timeout=requeue)
            await asyncio.sleep(COALESCE_SECONDS)


@kopf.on.event(GROUP, VERSION, "loops")
async def loop_event(
    *,
    type: str | None,
    event: Any,
    name: str,
    namespace: str | None,
    uid: str,
    memo: Any,
    **_: Any,
) -> None:
    """Keep the Loop in the store; start its task (new, or found at startup); wake or stop it."""
    store: Store = memo.caches.store
    driver = _loops.get(uid)
    if type == "DELETED":
        store.forget_loop(namespace or "", name, uid)
        if driver is not None:
            driver.task.cancel()
        return
    body = event.get("object") if isinstance(event, dict) else None
    fresh = body is None or store.put_loop(body)
    if driver is not None and not driver.task.done():
        if fresh:  # not newer: its own status patch coming back as an event
            driver.wake.set()
        return
    task = asyncio.create_task(
        drive_loop(memo.kube, store, namespace or "", name, uid), name=f"loop {namespace}/{name}"
    )
    _loops[uid] = _LoopDriver(task, namespace or "", name)
    _by_name[(namespace or "", name)] = uid
    task.add_done_callback(functools.partial(_forget, uid, name))


def _forget(uid: str, name: str, task: asyncio.Task[None]) -> None:
    driver = _loops.get(uid)
    if driver is not None and driver.task is task:
        del _loops[uid]
        if _by_name.get((driver.namespace, driver.name)) == uid:
            del _by_name[(driver.namespace, driver.name)]
    if not task.cancelled() and task.exception() is not None:
        log.error("loop task crashed: %s", task.exception(), extra={"loop": name})


@kopf.on.cleanup()
async def stop_loops(**_: Any) -> None:
    """Cancel every Loop's task on shutdown; the Loop's status is the resume point."""
    for driver in list(_loops.values()):
        driver.task.cancel()
    for driver in list(_loops.values()):
        with contextlib.suppress(asyncio.CancelledError):
            await driver.task
    _loops.clear()
    _by_name.clear()
