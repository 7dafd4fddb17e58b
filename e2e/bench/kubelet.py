"""The bench driver that plays the kubelet for kloop's pods (operator-only mode).

As soon as a pod with label ``kloop.dev/run`` is created it binds it to the bench node
(``pods/binding``, as the scheduler would), writes Running, then Succeeded with the greeting
workload's termination message (:mod:`e2e.bench.greeting`). The time its Succeeded write
returned is the step's start: the operator cannot see the pod end any earlier.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from e2e.bench.greeting import finished_status, running_status
from e2e.bench.watch import Watcher

Json = dict[str, Any]
NODE = "kloop-bench"
MERGE = "application/merge-patch+json"  # lists (containerStatuses) are replaced, not merged


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def register_node(api: client.ApiClient, name: str = NODE) -> None:
    """A Ready node with room for thousands of pods (nothing runs on it)."""
    core = client.CoreV1Api(api)
    room = {"cpu": "1000", "memory": "4000Gi", "pods": "5000"}
    body = {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"capacity": room, "allocatable": room},
    }
    try:
        core.create_node(body, _preload_content=False)
    except client.ApiException as err:
        if err.status != 409:
            raise
    now = _now()
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "the kloop bench driver plays the kubelet",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    status = {"status": {"capacity": room, "allocatable": room, "conditions": [ready]}}
    core.patch_node_status(name, status, _content_type=MERGE, _preload_content=False)


class FakeKubelet:
    """Watches kloop pods in all namespaces and runs each to completion at once."""

    def __init__(self, api: client.ApiClient, node: str = NODE, workers: int = 4) -> None:
        self.core = client.CoreV1Api(api)
        self.node = node
        self.succeeded: dict[tuple[str, str], float] = {}  # (namespace, pod) -> monotonic
        self.errors: Counter[str] = Counter()
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bench-kubelet")
        self._watcher = Watcher(
            self.core.list_pod_for_all_namespaces,
            label_selector="kloop.dev/run",
            on_event=self._event,
        )

    def start(self) -> FakeKubelet:
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._watcher.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _event(self, kind: str, pod: Json, now: float) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED" or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        self._pool.submit(self._run, pod)

    def _run(self, pod: Json) -> None:
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            if not (pod.get("spec") or {}).get("nodeName"):
                binding = {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": name},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
                }
                self.core.create_namespaced_pod_binding(
                    name, namespace, binding, _preload_content=False
                )
            started = _now()
            self.core.patch_namespaced_pod_status(
                name,
                namespace,
                running_status(pod, started),
                _content_type=MERGE,
                _preload_content=False,
            )
            self.core.patch_namespaced_pod_status(
                name,
                namespace,
                finished_status(pod, started, _now()),
                _content_type=MERGE,
                _preload_content=False,
            )
            with self._lock:
                self.succeeded[namespace, name] = time.monotonic()
        except client.ApiException as err:
            reason = f"{err.status}"
            with contextlib.suppress(ValueError):
                reason += " " + json.loads(err.body or "{}").get("message", "")[:120]
            with self._lock:
                self.errors[reason] += 1
