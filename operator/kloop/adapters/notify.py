"""Deliver notifications to the Loop's webhooks, in the background, through the egress guard.

``Notifier.dispatch`` is called after each status write with the status before and after it;
``kloop.core.notify`` says which events that write caused. Deliveries never block the run: each
(run, target) has one background worker that sends its events in order, so a receiver sees
"stage started" before "succeeded", and a slow or dead receiver delays only its own queue. Each
request has a short timeout; failures are retried with exponential backoff, bounded in attempts
and in total time. The URL is read from the Secret at delivery time and never logged, stored or
put in a message (every message is scrubbed of it). The outcome is counted in
``kloop_notifications_total`` and recorded as the target's last result in
``status.notifications`` (a small status merge patch).

Delivery is at most once across an operator crash: the events of a status write that reached
the apiserver just before the operator died are not sent by the next operator, which sees no
transition. Retries may deliver an event twice; receivers drop those by ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from kloop.adapters.egress import EgressGuard, Refused, Unavailable
from kloop.adapters.kube import Json, Kube, api_message, is_status
from kloop.api import GROUP, VERSION
from kloop.api.loop import NotifyTarget
from kloop.api.looprun import LoopRunStatus, NotificationRecord, NotificationResult
from kloop.core.egress import REDACTED
from kloop.core.notify import (
    Notification,
    RunRef,
    backoff_delay,
    compute_notifications,
    retryable_status,
    select,
)
from kloop.metrics import NOTIFICATIONS

log = logging.getLogger("kloop.notify")

USER_AGENT = "kloop-notifier/1"
MESSAGE_CHARS = 300
# keys of deliveries already queued, so one event is never queued twice by this process
REMEMBERED_KEYS = 4096


@dataclass(frozen=True)
class Policy:
    """How hard to try: per request, per delivery (all attempts), and between attempts."""

    request_timeout: float = 5.0
    attempts: int = 5
    total_seconds: float = 60.0
    first_backoff: float = 1.0
    max_backoff: float = 16.0


@dataclass(frozen=True)
class _Job:
    run: RunRef
    target: NotifyTarget
    note: Notification


@dataclass
class _Outcome:
    result: NotificationResult
    attempts: int
    message: str


class NotifyError(Exception):
    """The delivery cannot be made as configured (Secret, key, URL): retrying will not help."""


@dataclass
class Notifier:
    """Background delivery of notifications; one worker per (run uid, target name)."""

    policy: Policy = field(default_factory=Policy)
    _queues: dict[tuple[str, str], list[_Job]] = field(default_factory=dict)
    _workers: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    _queued: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _status_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def dispatch(
        self,
        kube: Kube,
        egress: EgressGuard,
        run: RunRef,
        targets: list[NotifyTarget],
        before: LoopRunStatus,
        after: LoopRunStatus,
    ) -> None:
        """Queue the notifications a status write caused; returns at once."""
        if not targets:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for target, note in select(targets, compute_notifications(run, before, after, now)):
            remembered = f"{target.name}|{note.key}"
            if remembered in self._queued:
                continue
            self._queued[remembered] = None
            while len(self._queued) > REMEMBERED_KEYS:
                self._queued.popitem(last=False)
            slot = (run.uid, target.name)
            self._queues.setdefault(slot, []).append(_Job(run, target, note))
            worker = self._workers.get(slot)
            if worker is None or worker.done():
                self._workers[slot] = asyncio.create_task(
                    self._work(kube, egress, slot), name=f"notify {run.name}/{target.name}"
                )

    async def close(self) -> None:
        """Cancel every pending delivery (operator shutdown)."""
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers.clear()
        self._queues.clear()

    async def _work(self, kube: Kube, egress: EgressGuard, slot: tuple[str, str]) -> None:
        queue = self._queues[slot]
        try:
            while queue:
                job = queue.pop(0)
                try:
                    await self._deliver(kube, egress, job)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # noqa: BLE001 - one bad delivery must not stop the queue
                    # the type only: an unexpected error's text or traceback may hold the URL
                    log.error(
                        "notification crashed: %s",
                        type(err).__name__,
                        extra={"run": job.run.name, "target": job.target.name},
                    )
        finally:
            if not queue:
                self._queues.pop(slot, None)
            if self._workers.get(slot) is asyncio.current_task():
                self._workers.pop(slot, None)

    async def _deliver(self, kube: Kube, egress: EgressGuard, job: _Job) -> None:
        started = time.monotonic()
        url = ""
        try:
            url = await _read_url(kube, job.run.namespace, job.target)
            outcome = await self._send(egress, url, job.note)
        except NotifyError as err:
            outcome = _Outcome(NotificationResult.FAILED, 0, str(err))
        outcome.message = _mask(outcome.message, url)[:MESSAGE_CHARS]
        NOTIFICATIONS.labels(
            job.run.namespace,
            job.run.loop,
            job.target.name,
            job.note.event.value,
            outcome.result.value,
        ).inc()
        log.info(
            "notification %s",
            outcome.result.value,
            extra={
                "run": job.run.name,
                "namespace": job.run.namespace,
                "target": job.target.name,
                "event": job.note.event.value,
                "attempts": outcome.attempts,
                "seconds": round(time.monotonic() - started, 2),
                "why": outcome.message,
            },
        )
        record = NotificationRecord(
            name=job.target.name,
            event=job.note.event.value,
            key=job.note.key,
            result=outcome.result,
            at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            attempts=outcome.attempts,
            message=outcome.message or None,
        )
        await self._record(kube, job.run, record)

    async def _send(self, egress: EgressGuard, url: str, note: Notification) -> _Outcome:
        """POST with retries: bounded in attempts and in total time, each request timed out."""
        headers = {
            "User-Agent": USER_AGENT,
            "X-Kloop-Event": note.event.value,
            "Idempotency-Key": note.key,
        }
        policy = self.policy
        deadline = time.monotonic() + policy.total_seconds
        attempts, last = 0, "not sent"
        while attempts < policy.attempts:
            attempts += 1
            budget = min(policy.request_timeout, deadline - time.monotonic())
            if budget <= 0:
                break
            try:
                async with asyncio.timeout(budget):
                    answer = await egress.post_json(url, note.payload, headers)
            except Refused as err:
                return _Outcome(NotificationResult.REFUSED, attempts, f"refused: {err}")
            except Unavailable as err:
                last = str(err)
            except TimeoutError:
                last = f"no answer within {budget:.1f}s"
            else:
                if 200 <= answer.status < 300:
                    return _Outcome(NotificationResult.DELIVERED, attempts, f"HTTP {answer.status}")
                last = f"HTTP {answer.status}"
                if not retryable_status(answer.status):
                    return _Outcome(NotificationResult.FAILED, attempts, last)
            delay = backoff_delay(attempts, policy.first_backoff, policy.max_backoff)
            if attempts >= policy.attempts or time.monotonic() + delay >= deadline:
                break
            await asyncio.sleep(delay)
        return _Outcome(NotificationResult.FAILED, attempts, f"gave up: {last}")

    async def _record(self, kube: Kube, run: RunRef, record: NotificationRecord) -> None:
        """Put ``record`` as the target's last result in the run's status (merge patch).

        One patch at a time, guarded by the resourceVersion read just before, so two
        targets finishing together do not overwrite each other's entry.
        """
        async with self._status_lock:
            for _ in range(5):
                try:
                    current = await kube.call(
                        kube.custom.get_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        run.namespace,
                        "loopruns",
                        run.name,
                    )
                    if current["metadata"].get("uid") != run.uid:
                        return  # deleted (and maybe re-created): nothing to record on
                    await kube.patch_status(
                        run.namespace, "loopruns", run.name, _patch(current, record)
                    )
                    return
                except Exception as err:
                    if is_status(err, 404):
                        return
                    if not is_status(err, 409):
                        log.warning(
                            "could not record a notification: %s",
                            api_message(err)[:200],
                            extra={"run": run.name},
                        )
                        return
            log.warning("could not record a notification: conflicts", extra={"run": run.name})


def _patch(run: Json, record: NotificationRecord) -> Json:
    """The merge patch setting ``record`` as its target's entry (lists are replaced whole)."""
    entries = [
        e
        for e in (run.get("status") or {}).get("notifications") or []
        if e.get("name") != record.name
    ]
    entries = [*entries, record.to_kube()][-8:]
    return {
        "metadata": {"resourceVersion": run["metadata"]["resourceVersion"]},
        "status": {"notifications": entries},
    }


async def _read_url(kube: Kube, namespace: str, target: NotifyTarget) -> str:
    """The webhook URL from ``urlSecretRef``, in the run's namespace; NotifyError if unusable."""
    ref = target.url_secret_ref
    try:
        secret = await kube.call(kube.core.read_namespaced_secret, ref.name, namespace)
    except Exception as err:
        if is_status(err, 404):
            raise NotifyError(f"Secret {ref.name!r} not found in {namespace}") from err
        if is_status(err, 403):
            raise NotifyError(f"the operator may not read Secret {ref.name!r} (403)") from err
        raise NotifyError(f"cannot read Secret {ref.name!r}: {type(err).__name__}") from err
    raw = (secret.get("data") or {}).get(ref.key)
    if raw is None:
        raise NotifyError(f"Secret {ref.name!r} has no key {ref.key!r}")
    try:
        url = base64.b64decode(raw, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise NotifyError(f"key {ref.key!r} of Secret {ref.name!r} is not UTF-8 text") from err
    if not url:
        raise NotifyError(f"key {ref.key!r} of Secret {ref.name!r} is empty")
    return url


def _mask(text: str, url: str) -> str:
    """``text`` without the URL or any recognisable piece of it (host, path, query, userinfo).

    Webhook URLs often carry their credential in the path (Slack, Teams), so the whole URL is
    the secret here, not only its userinfo and query parameters.
    """
    if not url:
        return text
    pieces: list[Any] = [url]
    try:
        parts = urlsplit(url)
        pieces += [parts.netloc, parts.hostname, parts.path, parts.query, parts.fragment]
        pieces += [p for p in parts.path.split("/")]
        pieces += [v for pair in parts.query.split("&") for v in pair.split("=")]
    except ValueError:
        pass
    for piece in sorted({str(p) for p in pieces if p and len(str(p)) >= 4}, key=len, reverse=True):
        text = text.replace(piece, REDACTED)
    return text
