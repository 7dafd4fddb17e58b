"""Make a run's trouble visible: conditions and Events while retrying, a Failed phase when not.

A pass that fails with a transient error is retried with backoff; meanwhile the run shows why
(``Reconciling``, then ``Stalled`` after several failures, and one Warning Event per distinct
error). When even the run's Failed status is refused, a minimal status patch records the
failure so nothing is left looking ``Running``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from kloop.adapters import events
from kloop.adapters.kube import Kube, api_message
from kloop.adapters.observe import Snapshot
from kloop.api.conditions import Reason
from kloop.core.conditions import retrying

log = logging.getLogger("kloop.errors")


def describe(err: BaseException) -> str:
    """An error in one line: the apiserver's words when it is an API error."""
    status = getattr(err, "status", None)
    prefix = f"{type(err).__name__} {status}" if status else type(err).__name__
    return f"{prefix}: {api_message(err)}"[:1000]


async def _patch_status(kube: Kube, snap: Snapshot, status: dict[str, object]) -> None:
    meta = snap.run["metadata"]
    await kube.patch_status(meta["namespace"], "loopruns", meta["name"], {"status": status})


async def report_retry(
    kube: Kube, snap: Snapshot, err: BaseException, attempts: int, reported: str
) -> None:
    """Best effort: show the error in the run's conditions, and post it once as an Event."""
    text = describe(err)
    now = datetime.now(UTC)
    generation = snap.observed.generation
    conditions = retrying(snap.observed.status, generation, now, text, attempts)
    try:
        await _patch_status(kube, snap, {"conditions": [c.to_kube() for c in conditions]})
    except Exception as patch_err:  # noqa: BLE001 - the apiserver may be what is failing
        log.warning("could not show the error on the run: %s", patch_err)
    if text != reported:
        await events.record(kube, snap.run, "Warning", Reason.RETRYING.value, text)


async def mark_failed(kube: Kube, snap: Snapshot, reason: Reason, message: str) -> None:
    """Record a failure with as few fields as possible, when the full status is refused."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {
        "type": "Ready",
        "status": "False",
        "reason": reason.value,
        "message": message,
        "lastTransitionTime": now,
    }
    stalled = {**condition, "type": "Stalled", "status": "True"}
    try:
        await _patch_status(
            kube,
            snap,
            {
                "phase": "Failed",
                "haltReason": reason.value,
                "message": message,
                "finishedAt": now,
                "conditions": [condition, stalled],
            },
        )
    except Exception as err:  # noqa: BLE001
        log.error("could not record the failure on the run: %s", err)
    await events.record(kube, snap.run, "Warning", reason.value, f"run failed: {message}")
