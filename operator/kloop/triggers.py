"""kopf wiring of release triggers: the webhook receiver's registry and one poller per git trigger.

An event handler on Loops (also called for every Loop when the operator starts) keeps the
receiver's paths and the pollers in line with each Loop's ``spec.triggers``; like every kloop
event handler it writes nothing on the object but ``status.triggers``, and adds no finalizer
(pollers are plain asyncio tasks, not kopf daemons). Trigger Secrets are read again every
``REFRESH_SECONDS``, so a rotated token takes effect without touching the Loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from kloop import shards
from kloop.adapters import triggers as io
from kloop.adapters.egress import EgressGuard
from kloop.adapters.kube import Json, Kube
from kloop.adapters.launch import get_loop
from kloop.adapters.receiver import Hook, Receiver, Registry, loop_ref
from kloop.api import GROUP, VERSION
from kloop.api.loop import WebhookProvider
from kloop.core import tags
from kloop.core.triggers import (
    TriggerChange,
    entry,
    interval_seconds,
    next_poll_delay,
    updated,
)
from kloop.core.webhooks import receiver_path

log = logging.getLogger("kloop.triggers")

REFRESH_SECONDS = 60.0
RECEIVER_OFF = "the operator's webhook receiver is off: run it with --webhook-port"


@dataclass
class _Poller:
    task: asyncio.Task[None]
    fingerprint: str


class Triggers:
    """Every trigger the operator serves: webhook paths, pollers and the Loops they belong to."""

    def __init__(self, kube: Kube, guard: EgressGuard, webhook_port: int = 0) -> None:
        self.kube = kube
        self.guard = guard
        self.webhook_port = webhook_port
        self.registry = Registry()
        self.receiver = Receiver(kube, self.registry) if webhook_port else None
        self.loops: dict[tuple[str, str], Json] = {}
        self.pollers: dict[tuple[str, str, str], _Poller] = {}
        self._tokens: dict[tuple[str, str, str], tuple[str, str | None, str | None]] = {}
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen for webhooks (when a port is set) and start refreshing Secrets."""
        if self.receiver is not None:
            await self.receiver.start("", self.webhook_port)
        self._refresher = asyncio.create_task(self._refresh(), name="trigger secrets")

    async def stop(self) -> None:
        """Stop the receiver, the refresher and every poller."""
        tasks = [p.task for p in self.pollers.values()]
        if self._refresher is not None:
            tasks.append(self._refresher)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.pollers.clear()
        if self.receiver is not None:
            await self.receiver.stop()

    async def observe(self, loop: Json) -> None:
        """A Loop was seen: serve its webhook triggers, run its pollers, record paths in status."""
        meta = loop["metadata"]
        key = (meta["namespace"], meta["name"])
        self.loops[key] = loop
        self._sync_pollers(loop)  # first: no API call, so an apiserver error cannot skip it
        await self._sync_webhooks(loop, force=False)

    def forget(self, namespace: str, name: str) -> None:
        """A Loop was deleted: drop its paths and stop its pollers."""
        self.loops.pop((namespace, name), None)
        self.registry.drop_loop(namespace, name)
        for key in [k for k in self.pollers if k[:2] == (namespace, name)]:
            self.pollers.pop(key).task.cancel()
        for key in [k for k in self._tokens if k[:2] == (namespace, name)]:
            del self._tokens[key]
        io.forget_lock(namespace, name)

    async def _token(
        self, namespace: str, loop: str, spec: Json, force: bool
    ) -> tuple[str | None, str | None]:
        """(token, problem) of a webhook trigger, read from its Secret when new or forced."""
        key = (namespace, loop, spec["name"])
        secret = spec["webhook"]["secretRef"]["name"]
        cached = self._tokens.get(key)
        if cached is not None and cached[0] == secret and not force:
            return cached[1], cached[2]
        try:
            (token,) = await io.secret_values(self.kube, namespace, secret, "token")
            found: tuple[str | None, str | None] = (token, None)
        except io.SecretProblem as err:
            found = (None, str(err))
        self._tokens[key] = (secret, *found)
        return found

    async def _sync_webhooks(self, loop: Json, force: bool) -> None:
        meta = loop["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        hooks: dict[str, Hook] = {}
        changes: dict[str, TriggerChange] = {}
        for spec in (loop.get("spec") or {}).get("triggers") or []:
            if spec.get("webhook") is None:
                continue
            problem = tags.check_pattern(spec.get("tagPattern"))
            token, secret_problem = await self._token(namespace, name, spec, force)
            if token is None:
                changes[spec["name"]] = TriggerChange(message=secret_problem)
                continue
            path = receiver_path(token, namespace, name, spec["name"])
            if self.receiver is None:
                problem = RECEIVER_OFF
            else:
                hooks[path] = Hook(
                    namespace,
                    name,
                    spec["name"],
                    WebhookProvider(spec["webhook"]["provider"]),
                    token,
                    loop_ref(loop),
                )
            changes[spec["name"]] = TriggerChange(
                webhook_path=path, message=problem, clear_message=problem is None
            )
        self.registry.set_loop(namespace, name, hooks)
        await self._record(loop, changes)

    async def _record(self, loop: Json, changes: dict[str, TriggerChange]) -> None:
        """Write what changed (and drop entries of removed triggers) when status differs."""
        if _merged(loop, changes) == _statuses(loop):
            return
        meta = loop["metadata"]
        async with io.lock_for(meta["namespace"], meta["name"]):
            fresh = await get_loop(self.kube, meta["namespace"], meta["name"])
            if fresh is None:
                return
            new = _merged(fresh, changes)
            if new != _statuses(fresh):
                await self.kube.patch_status(
                    meta["namespace"], "loops", meta["name"], {"status": {"triggers": new}}
                )

    def _sync_pollers(self, loop: Json) -> None:
        meta = loop["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        wanted: dict[tuple[str, str, str], Json] = {
            (namespace, name, t["name"]): t
            for t in (loop.get("spec") or {}).get("triggers") or []
            if t.get("git") is not None
        }
        for key in [k for k in self.pollers if k[:2] == (namespace, name) and k not in wanted]:
            self.pollers.pop(key).task.cancel()
        for key, spec in wanted.items():
            fingerprint = json.dumps(spec, sort_keys=True)
            poller = self.pollers.get(key)
            if poller is not None and poller.fingerprint == fingerprint and not poller.task.done():
                continue
            if poller is not None:
                poller.task.cancel()
            task = asyncio.create_task(self._poll(key, spec), name=f"poll {'/'.join(key)}")
            self.pollers[key] = _Poller(task, fingerprint)

    async def _poll(self, key: tuple[str, str, str], spec: Json) -> None:
        """Poll one git trigger every interval until cancelled (spec change, deletion, stop)."""
        namespace, name, trigger = key
        interval = interval_seconds(spec["git"].get("interval") or "5m")
        loop = self.loops.get((namespace, name)) or {}
        last = io.status_entry(loop, trigger).get("lastPolled")
        delay = next_poll_delay(interval, last, datetime.now(UTC))
        while True:
            await asyncio.sleep(delay)
            started = asyncio.get_running_loop().time()
            try:
                await io.poll_once(self.kube, self.guard, namespace, name, trigger)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a poller must survive API hiccups
                log.warning(
                    "poll failed: %s",
                    err,
                    extra={"namespace": namespace, "loop": name, "trigger": trigger},
                )
            delay = max(0.0, interval - (asyncio.get_running_loop().time() - started))

    async def _refresh(self) -> None:
        """Re-read every webhook trigger's Secret now and then (token rotation)."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            for loop in list(self.loops.values()):
                try:
                    await self._sync_webhooks(loop, force=True)
                except Exception as err:  # noqa: BLE001 - try again at the next refresh
                    log.warning("refreshing trigger Secrets failed: %s", err)


IDENTITY = ("name", "namespace", "uid", "resourceVersion", "generation")


def trigger_view(loop: Json) -> Json:
    """What the triggers read of a Loop: its identity, ``spec.triggers``, ``status.triggers``.

    Every Loop is kept (``Triggers.loops``) for the pollers and the Secret refresh; the whole
    body (managedFields, a client-side apply's last-applied annotation, the rest of spec and
    status) was a second copy of every Loop in memory. Identity is what an Event names.
    """
    view: Json = {k: loop[k] for k in ("apiVersion", "kind") if k in loop}
    meta = loop["metadata"]
    view["metadata"] = {k: meta[k] for k in IDENTITY if k in meta}
    for part in ("spec", "status"):
        found = (loop.get(part) or {}).get("triggers")
        if found is not None:
            view[part] = {"triggers": found}
    return view


def _statuses(loop: Json) -> list[Json] | None:
    found: list[Json] | None = (loop.get("status") or {}).get("triggers")
    return found


def _merged(loop: Json, changes: dict[str, TriggerChange]) -> list[Json] | None:
    """status.triggers of ``loop`` with ``changes``, one entry per trigger in spec order."""
    names = io.trigger_names(loop)
    if not names:
        return None
    new = [entry(_statuses(loop), n) or {"name": n} for n in names]
    for trigger, change in changes.items():
        if trigger in names:
            new = updated(new, names, trigger, change)
    return new


@kopf.on.startup()
async def start_triggers(memo: Any, **_: Any) -> None:
    """Start the webhook receiver (``--webhook-port``) and the Secret refresher."""
    guard = getattr(memo, "egress", None) or EgressGuard()
    kube = Kube()
    shards.identify(kube, getattr(memo, "shard", None))
    memo.triggers = Triggers(kube, guard, int(getattr(memo, "webhook_port", 0) or 0))
    await memo.triggers.start()


@kopf.on.cleanup()
async def stop_triggers(memo: Any, **_: Any) -> None:
    """Stop the receiver and every poller; status.triggers is where they resume."""
    state = getattr(memo, "triggers", None)
    if state is not None:
        await state.stop()


@kopf.on.event(GROUP, VERSION, "loops")
async def loop_event(
    *, type: str | None, body: Any, name: str, namespace: str | None, memo: Any, **_: Any
) -> None:
    """Keep a Loop's webhook paths and pollers current (also for every Loop at startup)."""
    state: Triggers = memo.triggers
    if type == "DELETED":
        state.forget(namespace or "", name)
        return
    loop = trigger_view(json.loads(json.dumps(body, default=dict)))  # kopf's body is a live view
    try:
        await state.observe(loop)
    except Exception as err:  # noqa: BLE001 - the next event or refresh tries again
        log.warning("triggers of %s/%s not updated: %s", namespace, name, err)
