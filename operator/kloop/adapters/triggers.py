"""The I/O of release triggers: their Secrets, status.triggers, and starting a tag's run.

Only ``status.triggers`` of a Loop is written here (a merge patch of that one field); the rest of
the Loop's status belongs to the Loop controller. Writes for one Loop are serialised by a lock,
and each reads the Loop first, so the webhook receiver and the pollers never undo each other.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kloop.adapters import events
from kloop.adapters.egress import EgressGuard, Refused, Unavailable
from kloop.adapters.git import Credentials, list_tags
from kloop.adapters.kube import Json, Kube, api_message, is_status
from kloop.adapters.launch import LaunchOutcome, get_loop, is_finished, launch, runs_of
from kloop.api.loop import ConcurrencyPolicy
from kloop.core import tags, triggers
from kloop.core.egress import redact_url
from kloop.core.triggers import TriggerChange
from kloop.core.webhooks import TagPush

log = logging.getLogger("kloop.triggers")

_locks: dict[tuple[str, str], asyncio.Lock] = {}


class SecretProblem(Exception):
    """A trigger's Secret is missing or lacks a key: the trigger cannot work until it is fixed."""


def lock_for(namespace: str, loop: str) -> asyncio.Lock:
    """The lock that serialises trigger work (status writes, launches) for one Loop."""
    return _locks.setdefault((namespace, loop), asyncio.Lock())


def forget_lock(namespace: str, loop: str) -> None:
    """Drop a deleted Loop's lock."""
    _locks.pop((namespace, loop), None)


async def secret_values(kube: Kube, namespace: str, name: str, *keys: str) -> list[str]:
    """The decoded values of ``keys`` of a Secret; SecretProblem when one is missing."""
    try:
        secret = await kube.call(kube.core.read_namespaced_secret, name, namespace)
    except Exception as err:
        if is_status(err, 404):
            raise SecretProblem(f"Secret {name} not found") from None
        if is_status(err, 403):
            raise SecretProblem(f"Secret {name} may not be read: {api_message(err)}") from None
        raise
    data = secret.get("data") or {}
    values = []
    for key in keys:
        if key not in data:
            raise SecretProblem(f"Secret {name} has no key {key!r}")
        try:
            values.append(base64.b64decode(data[key], validate=True).decode().strip())
        except (binascii.Error, UnicodeDecodeError):
            raise SecretProblem(f"Secret {name}: key {key!r} is not UTF-8 text") from None
        if not values[-1]:
            raise SecretProblem(f"Secret {name}: key {key!r} is empty")
    return values


def trigger_spec(loop: Json, name: str) -> Json | None:
    """One trigger of a Loop's spec by name."""
    return next(
        (t for t in (loop.get("spec") or {}).get("triggers") or [] if t.get("name") == name), None
    )


def trigger_names(loop: Json) -> list[str]:
    """The Loop's trigger names in spec order."""
    return [t["name"] for t in (loop.get("spec") or {}).get("triggers") or []]


def status_entry(loop: Json, name: str) -> Json:
    """status.triggers[name] of a Loop (empty when none yet)."""
    return triggers.entry((loop.get("status") or {}).get("triggers"), name)


async def write_status(kube: Kube, loop: Json, name: str, change: TriggerChange) -> Json:
    """Merge-patch status.triggers with ``change`` for trigger ``name``; the Loop as stored.

    The caller holds ``lock_for`` the Loop and passes the Loop as just read.
    """
    meta = loop["metadata"]
    current = (loop.get("status") or {}).get("triggers")
    new = triggers.updated(current, trigger_names(loop), name, change)
    if new == current:
        return loop
    return await kube.patch_status(
        meta["namespace"], "loops", meta["name"], {"status": {"triggers": new}}
    )


def _policy(loop: Json) -> ConcurrencyPolicy:
    return ConcurrencyPolicy((loop.get("spec") or {}).get("concurrencyPolicy") or "Forbid")


@dataclass(frozen=True)
class Delivery:
    """What became of a webhook's tag push: an HTTP status and why."""

    status: int
    reason: str
    run: str | None = None


async def accept_push(
    kube: Kube, namespace: str, loop_name: str, trigger: str, push: TagPush
) -> Delivery:
    """Start the run for a verified tag push, unless its tag was run already or is filtered out.

    202 when a run was created; 409 when the tag already ran (recentTags, or its run exists);
    200 when the tag does not match or concurrencyPolicy skipped it (Forbid); 404 when the
    Loop or trigger is gone.
    """
    async with lock_for(namespace, loop_name):
        loop = await get_loop(kube, namespace, loop_name)
        spec = trigger_spec(loop, trigger) if loop is not None else None
        if loop is None or spec is None or spec.get("webhook") is None:
            return Delivery(404, "no such trigger")
        pattern = spec.get("tagPattern")
        try:
            if not tags.matches(pattern, push.tag):
                return Delivery(200, f"ignored: tag {push.tag} does not match {pattern!r}")
        except tags.PatternError as err:
            return Delivery(200, f"ignored: {err}")
        entry = status_entry(loop, trigger)
        recent = entry.get("recentTags") or []
        request = triggers.run_request(loop_name, trigger, push, "webhook")
        if push.tag in recent:
            return Delivery(409, f"tag {push.tag} already started a run", request.name)
        outcome: LaunchOutcome = await launch(kube, loop, request)
        if outcome.created or outcome.existed:
            await write_status(
                kube,
                loop,
                trigger,
                TriggerChange(
                    last_tag=push.tag,
                    recent_tags=tags.remember(recent, push.tag),
                    clear_message=True,
                ),
            )
        if outcome.existed:
            return Delivery(409, f"tag {push.tag} already started run {request.name}", request.name)
        if not outcome.created:
            return Delivery(200, f"no run started: {outcome.why}")
        return Delivery(202, f"run {request.name} started for tag {push.tag}", request.name)


async def _credentials(kube: Kube, namespace: str, git: Json) -> Credentials | None:
    ref = git.get("secretRef")
    if not ref:
        return None
    username, password = await secret_values(kube, namespace, ref["name"], "username", "password")
    return Credentials(username, password)


async def poll_once(
    kube: Kube,
    guard: EgressGuard,
    namespace: str,
    loop_name: str,
    trigger: str,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """List the remote's tags once and start a run per new matching tag (``tags.plan_poll``).

    Every failure ends up in status.triggers[].message (and the log), never raised.
    """
    loop = await get_loop(kube, namespace, loop_name)
    spec = trigger_spec(loop, trigger) if loop is not None else None
    if loop is None or spec is None or spec.get("git") is None:
        return
    git = spec["git"]
    where = redact_url(git["url"])
    try:
        listed = await list_tags(guard, git["url"], await _credentials(kube, namespace, git))
        error = None
    except (Refused, Unavailable, SecretProblem) as err:
        listed, error = {}, f"cannot list the tags of {where}: {err}"
    async with lock_for(namespace, loop_name):
        loop = await get_loop(kube, namespace, loop_name)
        if loop is None or trigger_spec(loop, trigger) != spec:
            return  # changed meanwhile: the next poll uses the new spec
        if error is not None:
            log.warning(
                error, extra={"loop": loop_name, "namespace": namespace, "trigger": trigger}
            )
            source = triggers.poll_source(git["url"], spec.get("tagPattern"))
            change = triggers.poll_failed(status_entry(loop, trigger), error, now(), source)
            await write_status(kube, loop, trigger, change)
            return
        await _start_new_tags(kube, loop, trigger, spec, listed, where, now())


async def _start_new_tags(
    kube: Kube,
    loop: Json,
    trigger: str,
    spec: Json,
    listed: dict[str, str],
    where: str,
    at: datetime,
) -> None:
    entry = status_entry(loop, trigger)
    source = triggers.poll_source(spec["git"]["url"], spec.get("tagPattern"))
    base = triggers.baselined(entry, source)
    policy = _policy(loop)
    busy = False
    if policy is ConcurrencyPolicy.FORBID:
        busy = any(not is_finished(r) for r in await runs_of(kube, loop))
    try:
        plan = tags.plan_poll(
            listed,
            spec.get("tagPattern"),
            first_poll=not base,
            last_tag=entry.get("lastTag") if base else None,
            already_run=entry.get("recentTags") or [],
            policy=policy,
            busy=busy,
        )
    except tags.PatternError as err:
        await write_status(kube, loop, trigger, triggers.poll_failed(entry, str(err), at, source))
        return
    ctx = {"loop": loop["metadata"]["name"], "namespace": loop["metadata"]["namespace"]}
    log.info("polled %s: %s", where, plan.why, extra={**ctx, "trigger": trigger})
    if not base:
        await events.record(
            kube,
            loop,
            "Normal",
            "TriggerBaseline",
            f"git trigger {trigger}: {plan.why} of {where}; tags after it start runs",
        )
    for tag in plan.superseded:
        await events.record(
            kube,
            loop,
            "Normal",
            "TagSuperseded",
            f"git trigger {trigger}: tag {tag} not run, newer tag {plan.start[-1]} replaces it",
        )
    recent = entry.get("recentTags") or []
    last = entry.get("lastTag") if plan.start else plan.last_tag
    for tag in plan.start:
        push = TagPush(repository=where, tag=tag, commit=listed[tag], pushed_by="")
        outcome = await launch(kube, loop, triggers.run_request(ctx["loop"], trigger, push, "git"))
        if not (outcome.created or outcome.existed):
            break  # concurrencyPolicy said no: this tag and the later ones wait
        recent = tags.remember(recent, tag)
        last = tag
    message = None
    if plan.waiting:
        message = f"{len(plan.waiting)} new tag(s) wait for the active run to finish (Forbid)"
    await write_status(
        kube,
        loop,
        trigger,
        TriggerChange(
            last_tag=last,
            last_polled=at,
            recent_tags=recent if recent else None,
            message=message,
            clear_message=message is None,
            source=source,
        ),
    )
