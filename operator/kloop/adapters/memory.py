"""The memory ConfigMap: read which iterations it holds; append entries with optimistic locking."""

from __future__ import annotations

import json
from typing import Any

from kloop.adapters.kube import Json, Kube, is_status
from kloop.core.memory import LOG_KEY, append_entry, empty_log, render_data

CONFLICT_RETRIES = 5
LOOP_LABEL = "kloop.dev/loop"


class NotOurs(RuntimeError):
    """The ConfigMap exists but is not this Loop's memory: never overwrite it."""


async def read_log(kube: Kube, namespace: str, name: str) -> tuple[dict[str, Any], Json | None]:
    """The memory log and the ConfigMap it came from (None when it does not exist yet)."""
    try:
        cm = await kube.call(kube.core.read_namespaced_config_map, name, namespace)
    except Exception as err:
        if is_status(err, 404):
            return empty_log(), None
        raise
    try:
        log = json.loads((cm.get("data") or {}).get(LOG_KEY) or "null") or empty_log()
    except json.JSONDecodeError:
        log = empty_log()  # a hand-edited, broken log: start over rather than stop the loop
    log.setdefault("appended", {})
    return log, cm


def configmap(namespace: str, name: str, loop: Json, log: dict[str, Any], goal: str) -> Json:
    """The memory ConfigMap for a log, as written (its data is ``render_data``, nothing else)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LOOP_LABEL: loop["metadata"]["name"]},
            "ownerReferences": [
                {
                    "apiVersion": loop["apiVersion"],
                    "kind": loop["kind"],
                    "name": loop["metadata"]["name"],
                    "uid": loop["metadata"]["uid"],
                }
            ],
        },
        "data": render_data(log, loop["metadata"]["name"], goal),
    }


async def append(
    kube: Kube,
    namespace: str,
    name: str,
    entries: list[dict[str, Any]],
    loop: Json,
    goal: str,
    keep: int,
    max_bytes: int,
) -> None:
    """Append entries (idempotently) and compact; retries when someone else wrote in between.

    The data written is ``render_data`` of the compacted log: the very bytes compaction measured,
    so the ConfigMap never exceeds ``max_bytes``. Nothing is written when every entry was there.
    """
    for _ in range(CONFLICT_RETRIES):
        log, cm = await read_log(kube, namespace, name)
        if (
            cm is not None
            and (cm["metadata"].get("labels") or {}).get(LOOP_LABEL) != loop["metadata"]["name"]
        ):
            raise NotOurs(f"ConfigMap {namespace}/{name} is not the memory of this Loop")
        before = log
        for entry in entries:
            log = append_entry(log, entry, keep, max_bytes, loop["metadata"]["name"], goal)
        if cm is not None and log == before:
            return
        body = configmap(namespace, name, loop, log, goal)
        try:
            if cm is None:
                await kube.call(kube.core.create_namespaced_config_map, namespace, body)
            else:
                body["metadata"]["resourceVersion"] = cm["metadata"]["resourceVersion"]
                body["metadata"]["ownerReferences"] = (
                    cm["metadata"].get("ownerReferences") or body["metadata"]["ownerReferences"]
                )
                await kube.call(kube.core.replace_namespaced_config_map, name, namespace, body)
            return
        except Exception as err:
            if not is_status(err, 409):
                raise
    raise RuntimeError(f"memory ConfigMap {namespace}/{name}: too many write conflicts")
