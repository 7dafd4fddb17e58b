"""Condition types and reasons (kstatus conventions), documented in one place.

``Ready`` is the summary Flux and Argo CD read; ``Reconciling`` is True while a run progresses;
``Stalled`` is True when it cannot progress without a human. Event reasons equal these reasons.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from kloop.api.base import KubeModel


class ConditionType(StrEnum):
    """Condition types kloop sets."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    BUDGET_EXHAUSTED = "BudgetExhausted"
    AWAITING_APPROVAL = "AwaitingApproval"
    DRIFT_DETECTED = "DriftDetected"
    PAUSED = "Paused"


class Reason(StrEnum):
    """Why a condition is as it is; also the reason of the matching Kubernetes Event."""

    PENDING = "Pending"
    AWAITING_APPROVAL = "AwaitingApproval"
    APPROVED = "Approved"
    ITERATING = "Iterating"
    CHECKS_PASSED = "ChecksPassed"
    CHECKS_FAILED = "ChecksFailed"
    SUCCEEDED = "Succeeded"
    TEARING_DOWN = "TearingDown"
    INCONCLUSIVE = "Inconclusive"
    CHECKER_RETRY = "CheckerRetry"
    DRIFT_DETECTED = "DriftDetected"
    DRIFT_UNMEASURABLE = "DriftUnmeasurable"
    RESUMED = "Resumed"
    STAGE_PASSED = "StagePassed"
    CLUSTER_FAILED = "ClusterFailed"
    CLUSTER_UNAVAILABLE = "ClusterUnavailable"
    CLUSTER_NOT_ALLOWED = "ClusterNotAllowed"
    LOOP_NOT_FOUND = "LoopNotFound"
    INVALID_LOOP = "InvalidLoop"
    LOOP_CHANGED = "LoopChanged"
    MEMORY_CONFLICT = "MemoryConflict"
    TEARDOWN_FAILED = "TeardownFailed"
    CONNECTORS_READY = "ConnectorsReady"
    # halt reasons (DESIGN.md §3)
    MAX_ITERATIONS = "MaxIterations"
    TOKEN_BUDGET = "TokenBudget"
    COST_BUDGET = "CostBudget"
    DEADLINE = "Deadline"
    DRIFT_EXCEEDED = "DriftExceeded"
    CHECKER_FAILED = "CheckerFailed"
    ORACLE_REFUSED = "OracleRefused"
    ABORTED = "Aborted"
    INVALID_AGENT_OUTPUT = "InvalidAgentOutput"
    CONNECTOR_UNAVAILABLE = "ConnectorUnavailable"
    # agent errors
    AGENT_FAILED = "AgentFailed"
    MAKER_ERROR = "MakerError"
    POD_FAILED = "PodFailed"
    POD_REJECTED = "PodRejected"
    OOM_KILLED = "OOMKilled"
    TIMED_OUT = "TimedOut"
    POD_LOST = "PodLost"
    UNTRUSTED_POD = "UntrustedPod"
    # the git workspace (docs/agents.md, Worktrees)
    GIT_REMOTE_UNAVAILABLE = "GitRemoteUnavailable"
    CHECKOUT_FAILED = "CheckoutFailed"
    PUSH_REJECTED = "PushRejected"
    PUSH_FAILED = "PushFailed"
    NO_NEW_COMMIT = "NoNewCommit"
    # the run's own writes
    STATUS_REJECTED = "StatusRejected"
    MEMORY_REJECTED = "MemoryRejected"
    RETRYING = "RetryingAfterError"
    # the Loop (its Ready condition and the Events of its schedule and history)
    LOOP_READY = "LoopReady"
    SCHEDULED = "Scheduled"
    SUSPENDED = "Suspended"
    INVALID_SCHEDULE = "InvalidSchedule"
    INVALID_TIME_ZONE = "InvalidTimeZone"
    MISSED_SCHEDULE = "MissedSchedule"
    TOO_MANY_MISSED_STARTS = "TooManyMissedStarts"
    RUN_DELETED = "RunDeleted"


class ConditionStatus(StrEnum):
    """Condition status values."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    """A metav1.Condition."""

    type: str = Field(max_length=316)
    """Condition type."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(max_length=1024)
    """CamelCase reason."""
    message: str = Field(default="", max_length=32768)
    """Human-readable detail."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The generation this condition was computed for."""
