"""Kubernetes Events on LoopRuns: one per decision, so `kubectl describe` tells the story."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime

from kloop.adapters.kube import Json, Kube

log = logging.getLogger("kloop.events")
COMPONENT = "kloop-operator"


async def record(kube: Kube, obj: Json, type_: str, reason: str, message: str) -> None:
    """Post an Event; failures are logged, never raised (events are best effort)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = obj["metadata"]
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": f"kloop.dev/{COMPONENT}",
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await kube.call(kube.core.create_namespaced_event, meta["namespace"], body)
    except Exception as err:  # noqa: BLE001 - an event must never break reconciliation
        log.warning("could not post event %s: %s", reason, err)
