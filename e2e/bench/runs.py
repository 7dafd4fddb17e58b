"""LoopRun times from one watch: verdicts recorded and the run finished (local monotonic)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from e2e.bench.watch import Watcher
from e2e.loops import GROUP, VERSION, finished

Json = dict[str, Any]


@dataclass
class RunTimes:
    created: float | None = None  # set by the bench when its create call returned
    decided: dict[int, float] = field(default_factory=dict)  # iteration -> decision first seen
    finished: float | None = None
    phase: str | None = None
    iterations: int = 0


def record(times: RunTimes, run: Json, now: float) -> None:
    status = run.get("status") or {}
    for it in status.get("iterations") or []:
        if it.get("decision") is not None and it.get("number") is not None:
            times.decided.setdefault(int(it["number"]), now)
    times.phase = status.get("phase")
    times.iterations = int(status.get("iteration") or 0)
    if times.finished is None and finished(run):
        times.finished = now


class RunWatch:
    """Watches the LoopRuns of ``namespace``."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.runs: dict[str, RunTimes] = {}
        self.lock = threading.Lock()
        custom = client.CustomObjectsApi(api)
        self._watcher = Watcher(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "loopruns",
            on_event=self._event,
        )

    def _event(self, kind: str, run: Json, now: float) -> None:
        if kind == "DELETED":
            return
        with self.lock:
            record(self.runs.setdefault(run["metadata"]["name"], RunTimes()), run, now)

    def created(self, name: str, now: float) -> None:
        with self.lock:
            self.runs.setdefault(name, RunTimes()).created = now

    def done(self) -> int:
        with self.lock:
            return sum(1 for r in self.runs.values() if r.finished is not None)

    def start(self) -> RunWatch:
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._watcher.stop()
