"""Small state builders for the decision-core tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from kloop.api.loop import LoopSpec
from kloop.api.looprun import LoopRunSpec, LoopRunStatus
from kloop.core.decide import decide
from kloop.core.model import (
    ConnectorOutcome,
    CreatePod,
    Decision,
    DriftOutcome,
    ObservedCluster,
    ObservedLoop,
    ObservedPod,
    ObservedRun,
    OracleOutcome,
)

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
RUN = "r"


def container(image: str, script: str) -> dict[str, Any]:
    return {"name": "main", "image": image, "command": ["sh", "-c", script]}


def loop_spec(**overrides: Any) -> LoopSpec:
    spec: dict[str, Any] = {
        "goal": "make it pass",
        "maker": {"template": {"spec": {"containers": [container("maker:1", "make")]}}},
        "checkers": [
            {"name": "tests", "template": {"spec": {"containers": [container("check:1", "c")]}}}
        ],
        "budget": {"maxIterations": 3},
    }
    spec.update(overrides)
    return LoopSpec.model_validate(spec)


def with_teardown(**overrides: Any) -> LoopSpec:
    teardown = {"template": {"spec": {"containers": [container("td:1", "clean")]}}}
    return loop_spec(teardown=teardown, **overrides)


def observe(
    status: LoopRunStatus | None = None,
    spec: LoopSpec | None = None,
    pods: dict[str, ObservedPod] | None = None,
    now: datetime = T0,
    run_spec: dict[str, Any] | None = None,
    oracles: dict[tuple[int, str], OracleOutcome] | None = None,
    memory: frozenset[int] = frozenset(),
    approvals: dict[str, str] | None = None,
    loop_missing: bool = False,
    aborted_by: str | None = None,
    clusters: dict[str, dict[str, str] | ObservedCluster] | None = None,
    memory_conflict: str | None = None,
    write_rejected: tuple[str, str] | None = None,
    created: dict[str, str] | None = None,
    drift: dict[tuple[int, str], DriftOutcome] | None = None,
    resumes: dict[int, str] | None = None,
    placed_cleaned: frozenset[str] = frozenset(),
    connectors: dict[tuple[str, str], ConnectorOutcome] | None = None,
) -> ObservedRun:
    return ObservedRun(
        name=RUN,
        namespace="ns",
        generation=1,
        spec=LoopRunSpec.model_validate(run_spec or {"loopRef": {"name": "l"}}),
        status=status or LoopRunStatus(),
        loop=ObservedLoop("l", None if loop_missing else (spec or loop_spec())),
        now=now,
        pods=pods or {},
        oracles=oracles or {},
        memory_iterations=memory,
        approvals=approvals or {},
        aborted_by=aborted_by,
        clusters={
            n: v if isinstance(v, ObservedCluster) else ObservedCluster(n, v)
            for n, v in (clusters or {}).items()
        },
        drift=drift or {},
        resumes=resumes or {},
        placed_cleaned=placed_cleaned,
        connectors=connectors or {},
        uid="uid-1",
        memory_conflict=memory_conflict,
        write_rejected=write_rejected,
        created=created or {},
    )


def succeeded(name: str, result: dict[str, Any] | str, at: datetime = T0) -> ObservedPod:
    message = result if isinstance(result, str) else json.dumps(result)
    return ObservedPod(
        name, "Succeeded", created_at=at, exit_code=0, message=message, uid=f"uid-{name}"
    )


def running(name: str, at: datetime = T0) -> ObservedPod:
    return ObservedPod(name, "Running", created_at=at, uid=f"uid-{name}")


def maker_ok(tokens: int = 0, cost: float = 0.0, summary: str = "did it") -> dict[str, Any]:
    return {"v": 1, "outcome": "changed", "summary": summary, "tokens": tokens, "costUSD": cost}


def verdict(v: str, *reasons: str) -> dict[str, Any]:
    return {"v": 1, "verdict": v, "reasons": list(reasons)}


def maker_pod(i: int) -> str:
    return f"{RUN}-s0-local-i{i}-maker"


def checker_pod(i: int, name: str = "tests") -> str:
    return f"{RUN}-s0-local-i{i}-check-{name}"


def created(decision: Decision) -> list[str]:
    return [a.pod.name for a in decision.actions if isinstance(a, CreatePod)]


class Simulation:
    """Drives decide() the way the operator does: pods appear when asked for, finish on demand."""

    def __init__(self, spec: LoopSpec, **observe_kwargs: Any) -> None:
        self.spec = spec
        self.status = LoopRunStatus()
        self.pods: dict[str, ObservedPod] = {}
        self.now = T0
        self.memory: set[int] = set()
        self.created: list[str] = []
        self.kwargs = observe_kwargs
        self.last: Decision | None = None

    def step(self) -> Decision:
        d = decide(
            observe(
                self.status,
                self.spec,
                dict(self.pods),
                self.now,
                memory=frozenset(self.memory),
                **self.kwargs,
            )
        )
        self.status = d.status
        for name in created(d):
            self.created.append(name)
            self.pods[name] = running(name, self.now)
        for action in d.actions:
            entry = getattr(action, "entry", None)
            if entry is not None:
                self.memory.add(entry["iteration"])
        self.last = d
        return d

    def finish(self, name: str, result: dict[str, Any] | str) -> Decision:
        self.now += timedelta(seconds=5)
        self.pods[name] = succeeded(name, result, self.now)
        return self.step()
