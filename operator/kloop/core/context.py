"""What one reconcile pass has observed and decided so far, shared by the core's steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from kloop.api.conditions import Reason
from kloop.api.looprun import ClusterProgress, IterationRecord, LoopRunStatus
from kloop.core.model import Action, ObservedRun, RecordEvent
from kloop.core.plan import StagePlan


def iso(t: datetime) -> str:
    """A timestamp as status stores it."""
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """A status timestamp back to a datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


@dataclass
class Pass:
    """The observation, the status being built, the actions asked for and when to look again."""

    obs: ObservedRun
    status: LoopRunStatus
    actions: list[Action] = field(default_factory=list)
    wake_in: list[float] = field(default_factory=list)
    why: str = ""
    stall_reason: Reason | None = None

    @property
    def now(self) -> str:
        """The pass's time, as status stores it."""
        return iso(self.obs.now)

    def event(self, reason: Reason, message: str, warning: bool = False) -> None:
        """A Kubernetes Event on the run; its reason is a condition reason."""
        self.actions.append(
            RecordEvent("Warning" if warning else "Normal", reason.value, message[:1000])
        )

    def open_records(self) -> list[IterationRecord]:
        """Every iteration still waiting for its decision (one per running target)."""
        return [r for r in self.status.iterations if r.decision is None]

    def open_record(self, stage: str, cluster: str) -> IterationRecord | None:
        """The open iteration of one target, if any."""
        return next(
            (r for r in self.open_records() if (r.stage, r.cluster) == (stage, cluster)), None
        )


@dataclass
class Target:
    """One stage × one cluster: its plan, its progress in status and its open iteration."""

    stage: StagePlan
    progress: ClusterProgress
    record: IterationRecord

    @property
    def cluster(self) -> str:
        """The target's cluster."""
        return self.progress.name
