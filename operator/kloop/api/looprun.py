"""The LoopRun: one execution of a Loop, and the status that records what it saw and decided."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from kloop.api.base import KubeModel
from kloop.api.conditions import Condition
from kloop.api.loop import Name


class LoopRef(KubeModel):
    """The Loop this run executes, in the same namespace."""

    name: Name
    """Loop name."""


class BudgetOverride(KubeModel):
    """Caps for this run only: each may lower the Loop's cap (or add one it lacks), not raise it."""

    max_iterations: int | None = Field(default=None, ge=1, le=1000)
    """Iterations for this run."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Token cap for this run."""
    max_cost_usd: float | None = Field(default=None, gt=0, alias="maxCostUSD")
    """Cost cap in USD for this run."""
    deadline_seconds: int | None = Field(default=None, ge=1)
    """Wall-clock cap for this run."""


class LoopRunSpec(KubeModel):
    """Which Loop to run and with what run-specific inputs."""

    loop_ref: LoopRef
    """The Loop to execute."""
    goal_suffix: str | None = Field(default=None, max_length=4096)
    """Appended to the Loop's goal for this run."""
    budget: BudgetOverride | None = None
    """Budget overrides for this run."""
    context: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Free-form JSON handed to agents as KLOOP_CONTEXT."""


class Phase(StrEnum):
    """Where a run is in its life."""

    PENDING = "Pending"
    RUNNING = "Running"
    AWAITING_APPROVAL = "AwaitingApproval"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    HALTED = "Halted"

    @property
    def finished(self) -> bool:
        """Succeeded, Failed and Halted are final."""
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.HALTED)


class StageState(StrEnum):
    """Where a stage, or one cluster of it, stands."""

    PENDING = "Pending"
    RUNNING = "Running"
    AWAITING_APPROVAL = "AwaitingApproval"
    PASSED = "Passed"
    FAILED = "Failed"
    HALTED = "Halted"


class TargetState(StrEnum):
    """Where one cluster of a stage (a target) stands."""

    PENDING = "Pending"
    RUNNING = "Running"
    PAUSED = "Paused"
    PASSED = "Passed"
    FAILED = "Failed"
    HALTED = "Halted"
    UNAVAILABLE = "Unavailable"
    NOT_ALLOWED = "NotAllowed"

    @property
    def finished(self) -> bool:
        """Passed, Failed, Halted, Unavailable and NotAllowed are final for the target."""
        return self not in (TargetState.PENDING, TargetState.RUNNING, TargetState.PAUSED)

    @property
    def failed(self) -> bool:
        """The target did not pass and will not."""
        return self.finished and self is not TargetState.PASSED


class TeardownState(StrEnum):
    """Where the teardown step stands."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class Outcome(StrEnum):
    """What a maker did, as recorded: its own word, or ``error`` when its pod gave no result."""

    CHANGED = "changed"
    NOTHING_TO_DO = "nothing-to-do"
    FAILED = "failed"
    ERROR = "error"


class RecordedVerdict(StrEnum):
    """A grader's verdict, as recorded: its own word, or ``error`` when it gave none."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


class IterationDecision(StrEnum):
    """What was decided at the end of an iteration."""

    ITERATE = "iterate"
    SUCCEED = "succeed"
    PAUSE = "pause"
    HALT = "halt"
    FAIL = "fail"


class TrackedPod(KubeModel):
    """A pod kloop asked for; only it (and, once seen, only its uid) is trusted as a result."""

    name: str
    """Pod name."""
    requested_at: str
    """When kloop decided to create it."""
    uid: str | None = None
    """The pod's uid, once kloop has seen the pod it created."""
    placed_in: str | None = None
    """The target cluster the pod runs in (a checker with placement Target); else the run's
    namespace in the operator's cluster."""
    namespace: str | None = None
    """For a pod placed in a target cluster: its namespace there."""


class Usage(KubeModel):
    """What the run has consumed, as the agents reported it."""

    tokens: int = 0
    """Tokens reported by all agents."""
    cost_usd: float = Field(default=0.0, alias="costUSD")
    """Cost reported by all agents."""
    wall_seconds: float = 0.0
    """Seconds since the run started."""


class MakerRecord(KubeModel):
    """What the maker of one iteration did."""

    pod: str | None = None
    """The maker pod."""
    outcome: Outcome
    """changed, nothing-to-do, failed, or error."""
    summary: str = Field(default="", max_length=4096)
    """The maker's summary, or the error reason."""
    tokens: int = 0
    """Tokens the maker reported."""
    cost_usd: float = Field(default=0.0, alias="costUSD")
    """Cost the maker reported."""
    error_reason: str | None = None
    """Why the outcome is an error (PodFailed, OOMKilled, TimedOut, InvalidAgentOutput)."""


class CheckerRecord(KubeModel):
    """One checker's verdict in one iteration."""

    name: str
    """Checker name."""
    verdict: RecordedVerdict
    """pass, fail, inconclusive, or error."""
    reasons: list[str] = Field(default_factory=list, max_length=20)
    """Why, as the checker said (or the error)."""
    score: float | None = None
    """Optional score."""
    tokens: int = 0
    """Tokens the checker reported."""
    cost_usd: float = Field(default=0.0, alias="costUSD")
    """Cost the checker reported."""
    error_reason: str | None = None
    """Why the verdict is an error."""


class WorkspaceRecord(KubeModel):
    """The maker's git checkout of one iteration (``spec.workspace.git``)."""

    branch: str = Field(max_length=255)
    """The iteration's own branch, ``kloop/<run>/<stage>-<cluster>-i<n>``."""
    started_from: str = Field(max_length=255)
    """What the checkout was made from: ``ref``, or the previous iteration's branch."""
    base: str | None = Field(default=None, max_length=64)
    """The commit the maker started at."""
    commit: str | None = Field(default=None, max_length=64)
    """The commit kloop pushed to ``branch`` when the maker ended (``push: true``); checkers
    grade exactly this commit, and the target's next iteration starts from it."""
    note: str | None = Field(default=None, max_length=512)
    """What the next maker is told about the push (e.g. it said changed but committed nothing)."""


class IterationRecord(KubeModel):
    """One iteration: what the maker did, what the checkers said, and what was decided."""

    number: int
    """Iteration number, from 1."""
    stage: str
    """Stage name."""
    cluster: str
    """Cluster name."""
    maker: MakerRecord | None = None
    """The maker's outcome."""
    checkers: list[CheckerRecord] = Field(default_factory=list)
    """The checkers' verdicts."""
    workspace: WorkspaceRecord | None = None
    """The maker's git checkout and the commit pushed (``spec.workspace.git``)."""
    decision: IterationDecision | None = None
    """iterate, succeed, halt, or fail."""
    why: str | None = None
    """The reason for the decision."""
    started_at: str | None = None
    """When the maker pod was created."""
    finished_at: str | None = None
    """When the decision was taken."""
    retried: list[CheckerRecord] = Field(default_factory=list, max_length=80)
    """Errored attempts of checkers that were run again (``checkers[].retries``), oldest first."""
    pods: list[TrackedPod] = Field(default_factory=list, max_length=100)
    """Pods requested for this iteration while it is open (cleared when it ends)."""
    truncated: bool | None = None
    """Reasons, summary or why were shortened to keep status small (see statusIterations)."""


class IterationSummary(KubeModel):
    """Iterations folded out of ``iterations``: counts and the last failures."""

    iterations: int = 0
    """How many iterations were folded."""
    passed: int = 0
    """Folded iterations whose checkers all passed."""
    failed: int = 0
    """Folded iterations that did not pass (iterate, halt or fail)."""
    last_iteration: int | None = None
    """The newest folded iteration."""
    last_failures: list[str] = Field(default_factory=list, max_length=5)
    """The last folded failures, one shortened line each (newest last)."""


class ClusterProgress(KubeModel):
    """One cluster of a stage: a target, with its own inner loop."""

    name: str
    """Cluster name (``local`` is the operator's own cluster)."""
    state: TargetState
    """Pending, Running, Paused, Passed, Failed, Halted, Unavailable or NotAllowed."""
    iterations: int = 0
    """Iterations run in this cluster."""
    last_verdict: RecordedVerdict | None = None
    """The last combined verdict."""
    drifted_objects: int | None = None
    """Drifted objects at the last check."""
    drift_details: list[str] = Field(default_factory=list, max_length=20)
    """The drifted objects at the last check (the first 5, shortened; the iteration's drift
    verdict and memory have more). Cleared when the stage passes."""
    reason: str | None = None
    """Why the target ended as it did (e.g. ClusterUnavailable, MaxIterations)."""
    message: str | None = None
    """The reason in words."""
    started_at: str | None = None
    """When the target's first iteration started."""
    finished_at: str | None = None
    """When the target reached a final state."""
    resumed_by: str | None = None
    """Who resumed the target after an inconclusive verdict."""
    unavailable_since: str | None = None
    """Since when the running target's cluster has not been usable (cleared when it is again)."""
    token_expires_at: str | None = None
    """When the short-lived token minted for this target's latest agent pod expires (never the
    token itself)."""


class StageProgress(KubeModel):
    """One stage of the rollout."""

    name: str
    """Stage name."""
    state: StageState
    """Pending, Running, AwaitingApproval, Passed, Failed or Halted."""
    clusters: list[ClusterProgress] = Field(default_factory=list, max_length=64)
    """Per-cluster progress."""
    approved_by: str | None = None
    """Who approved the stage."""
    approved_at: str | None = None
    """When the stage was approved."""


class TeardownProgress(KubeModel):
    """The teardown pod that runs at most once at the end."""

    state: TeardownState
    """Running, Succeeded, Failed, or Skipped."""
    pod: str | None = None
    """The teardown pod."""
    requested_at: str | None = None
    """When kloop decided to create the teardown pod."""
    uid: str | None = None
    """The teardown pod's uid, once seen."""
    message: str | None = None
    """Detail, e.g. why it failed."""


class NotificationResult(StrEnum):
    """How a notification delivery ended."""

    DELIVERED = "delivered"
    FAILED = "failed"
    REFUSED = "refused"


class NotificationRecord(KubeModel):
    """The last delivery to one notify target of the Loop (never its URL)."""

    name: str
    """The notify target's name."""
    event: str
    """The event delivered (stage-started, awaiting-approval, paused, halted, ...)."""
    key: str
    """The Idempotency-Key sent with it (run uid / event / stage / iteration)."""
    result: NotificationResult
    """delivered, failed (gave up after retries, or a 4xx answer) or refused (egress guard)."""
    at: str
    """When the delivery ended."""
    attempts: int = 0
    """Requests made."""
    message: str | None = Field(default=None, max_length=300)
    """The receiver's status or the error, with the URL masked."""


class ConnectorCheck(KubeModel):
    """The latest pre-flight handshake with one connector (never a header value)."""

    name: str
    """The connector."""
    stage: str
    """The stage it was checked for (at the start of each stage, before its first pod)."""
    checked_at: str
    """When the operator got the answer."""
    ready: bool
    """The server answered and has every tool the Loop requires."""
    server_name: str | None = Field(default=None, max_length=128)
    """``serverInfo.name`` from the initialize answer."""
    server_version: str | None = Field(default=None, max_length=64)
    """``serverInfo.version`` from the initialize answer."""
    protocol_version: str | None = Field(default=None, max_length=32)
    """The MCP protocol version the server chose."""
    tools: list[str] = Field(default_factory=list, max_length=32)
    """Tools found by tools/list: the required ones first, then others, at most 32."""
    tool_count: int = 0
    """How many tools the server listed in all."""
    headers: list[str] = Field(default_factory=list, max_length=16)
    """Names of the headers sent (the keys of headersSecretRef; the values stay in the Secret)."""
    message: str | None = Field(default=None, max_length=1024)
    """Why the connector is unavailable (unreachable, missing tools), when it is."""


class LoopRunStatus(KubeModel):
    """What the run saw, decided and why; bounded so it stays far below the object size limit."""

    phase: Phase | None = None
    """Pending, Running, AwaitingApproval, Succeeded, Failed or Halted."""
    stage: str | None = None
    """The current stage."""
    iteration: int = 0
    """The current iteration number (from 1)."""
    last_verdict: RecordedVerdict | None = None
    """The last combined checker verdict."""
    usage: Usage = Field(default_factory=Usage)
    """Tokens, cost and time used."""
    stages: list[StageProgress] = Field(default_factory=list)
    """Per-stage, per-cluster progress."""
    iterations: list[IterationRecord] = Field(default_factory=list, max_length=100)
    """The latest iterations, oldest first (bounded; memory keeps the long history)."""
    halt_reason: str | None = None
    """Why the run halted (MaxIterations, TokenBudget, ...)."""
    message: str | None = None
    """The latest decision in words."""
    teardown: TeardownProgress | None = None
    """The teardown step."""
    started_at: str | None = None
    """When the run started."""
    finished_at: str | None = None
    """When the run finished."""
    observed_generation: int | None = None
    """The generation last acted upon."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Reconciling, Stalled and domain conditions."""
    kopf: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Kopf's bookkeeping, kept in status so it never shows as GitOps drift."""
    earlier_iterations: IterationSummary | None = None
    """Iterations older than those kept in ``iterations`` (the Loop's statusIterations)."""
    placed_pods: list[TrackedPod] = Field(default_factory=list, max_length=200)
    """Pods placed in target clusters whose inputs and kubeconfig are not cleaned up yet: kept
    apart from the iterations, so a failed delete or cleanup is retried after they close."""
    clusters_passed: str | None = None
    """Clusters of the current stage that passed, of all its clusters (e.g. ``2/3``)."""
    memory_recorded_through: int | None = None
    """The last iteration of this run known to be in the Loop's memory: set after each memory
    append, so a finished run is never appended again, however many runs came since."""
    notifications: list[NotificationRecord] = Field(default_factory=list, max_length=8)
    """The last delivery per notify target (written by the notifier, not by reconciles)."""
    connectors: list[ConnectorCheck] = Field(default_factory=list, max_length=16)
    """The latest MCP handshake with each of the Loop's connectors (spec.connectors)."""
