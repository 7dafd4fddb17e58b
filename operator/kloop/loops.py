"""kopf wiring for Loops: schedules, history limits and Loop.status, one task per Loop.

Each Loop gets one asyncio task (keyed by uid, like the run drivers in handlers.py), started by
kopf's event handler on Loops (also for every Loop when the operator starts), woken by the Loop's
events and its LoopRuns' events (handlers.py calls ``wake``), and otherwise asleep until the next
scheduled time. A pass reads the Loop and its runs, decides (``kloop.core.loops``), then: posts
Events, starts the due scheduled run (``adapters.launch``), deletes runs past the history limits
and merge-patches the status fields it owns. It is the one writer of those fields; it never
writes the spec, nor ``status.triggers``. Run names are deterministic from the scheduled time, so
a pass repeated after a crash finds the run it created instead of creating another.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kloop.adapters import events
from kloop.adapters.kube import Json, Kube, is_status
from kloop.adapters.launch import get_loop, launch, runs_of
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


def wake(namespace: str, name: str) -> None:
    """Wake the task of Loop ``namespace/name`` (one of its runs changed)."""
    for driver in _loops.values():
        if (driver.namespace, driver.name) == (namespace, name):
            driver.wake.set()


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


async def apply_loop(kube: Kube, loop: Json, decision: LoopDecision) -> None:
    """Carry out one pass's decision: Events, the scheduled run, pruning, then status."""
    meta = loop["metadata"]
    for event in decision.events:
        await events.record(kube, loop, event.type, event.reason, event.message)
    if decision.start is not None:
        await launch(kube, loop, decision.start)  # before lastScheduleTime: never lost, never twice
    patch = status_patch(loop.get("status") or {}, decision.status)
    if patch:
        await kube.patch_status(meta["namespace"], "loops", meta["name"], {"status": patch})
    for name in decision.delete:  # last: a delete that keeps failing holds back no status
        await _delete_run(kube, loop, name, "past the Loop's history limit")


async def drive_loop(kube: Kube, namespace: str, name: str, uid: str) -> None:
    """Pass after pass for one Loop until it is gone; API errors back off and retry."""
    ctx = {"loop": name, "namespace": namespace}
    failures = 0
    while True:
        driver = _loops[uid]
        driver.wake.clear()
        requeue: float | None = None
        try:
            loop = await get_loop(kube, namespace, name)  # only its 404 ends the task
            if loop is None or loop["metadata"]["uid"] != uid:
                return  # deleted (or re-created: the new Loop has its own task)
            decision = decide_loop(observe_loop(loop, await runs_of(kube, loop), datetime.now(UTC)))
            await apply_loop(kube, loop, decision)
            requeue = decision.requeue_after
            failures = 0
            log.debug(decision.why or "loop reconciled", extra=ctx)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a Loop must survive API hiccups
            failures += 1
            requeue = min(ERROR_BACKOFF_MAX, 2.0**failures)
            log.warning("loop pass failed, retrying in %.0fs: %s", requeue, err, extra=ctx)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(driver.wake.wait(), timeout=requeue)
            await asyncio.sleep(COALESCE_SECONDS)


@kopf.on.event(GROUP, VERSION, "loops")
async def loop_event(
    *, type: str | None, name: str, namespace: str | None, uid: str, memo: Any, **_: Any
) -> None:
    """Start a task for a Loop (new, or found at startup); wake it on changes; stop it on delete."""
    driver = _loops.get(uid)
    if type == "DELETED":
        if driver is not None:
            driver.task.cancel()
        return
    if driver is not None and not driver.task.done():
        driver.wake.set()
        return
    task = asyncio.create_task(
        drive_loop(memo.kube, namespace or "", name, uid), name=f"loop {namespace}/{name}"
    )
    _loops[uid] = _LoopDriver(task, namespace or "", name)
    task.add_done_callback(functools.partial(_forget, uid, name))


def _forget(uid: str, name: str, task: asyncio.Task[None]) -> None:
    driver = _loops.get(uid)
    if driver is not None and driver.task is task:
        del _loops[uid]
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
