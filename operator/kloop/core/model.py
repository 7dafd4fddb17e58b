"""What the core sees (Observed*) and what it asks for (actions): plain values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from kloop.api.loop import LoopSpec
from kloop.api.looprun import LoopRunSpec, LoopRunStatus, TeardownState

LOCAL_CLUSTER = "local"
IMPLICIT_STAGE = "default"


class Role(StrEnum):
    """What a pod does in a run."""

    MAKER = "maker"
    CHECKER = "checker"
    TEARDOWN = "teardown"


@dataclass(frozen=True)
class ContainerEnd:
    """How one of kloop's own containers in a pod (the workspace clone and push) stands."""

    terminated: bool
    exit_code: int | None = None
    message: str | None = None


@dataclass(frozen=True)
class ObservedPod:
    """The parts of a pod's status the core decides on."""

    name: str
    phase: str
    created_at: datetime | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    deleting: bool = False
    uid: str = ""
    kloop_containers: dict[str, ContainerEnd] = field(default_factory=dict)
    """kloop's own init containers (``kloop-*``: the workspace clone and push), by name."""


@dataclass(frozen=True)
class OracleOutcome:
    """The answer of one HTTP oracle evaluation (made by the I/O layer)."""

    verdict: str
    reasons: list[str]
    value: str | None = None
    error_reason: str | None = None


class ClusterState(StrEnum):
    """Whether a run may use a cluster, as the I/O layer found it."""

    READY = "Ready"
    NOT_ALLOWED = "NotAllowed"
    UNAVAILABLE = "Unavailable"


@dataclass(frozen=True)
class ObservedCluster:
    """A target cluster: its labels (for selectors) and whether this run may use it now.

    ``NotAllowed``: its Secret's ``kloop.dev/allowed-namespaces`` does not name the run's
    namespace. ``Unavailable``: unreadable kubeconfig, unreachable apiserver (``message`` says
    which). A cluster a stage names that has no Secret at all is simply absent.
    """

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    state: ClusterState = ClusterState.READY
    message: str | None = None
    agent_namespace: str | None = None
    """Where pods placed in this cluster run: the namespace of its agent ServiceAccount."""


@dataclass(frozen=True)
class DriftOutcome:
    """What the operator measured in one target: drifted objects (names), or why it could not."""

    objects: int
    details: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class ConnectorOutcome:
    """What the I/O layer's MCP handshake with one connector found (or why it failed).

    ``headers`` are the names of the headers it sent (never their values); ``error`` is set when
    the server could not be reached or did not answer the handshake.
    """

    server_name: str | None = None
    server_version: str | None = None
    protocol_version: str | None = None
    tools: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class ObservedLoop:
    """The Loop a run executes; ``spec`` is None when it is missing or invalid (see ``problem``)."""

    name: str
    spec: LoopSpec | None
    problem: str | None = None
    uid: str | None = None


@dataclass(frozen=True)
class ObservedRun:
    """Everything observed for one reconcile of a LoopRun."""

    name: str
    namespace: str
    generation: int
    spec: LoopRunSpec
    status: LoopRunStatus
    loop: ObservedLoop
    now: datetime
    pods: dict[str, ObservedPod] = field(default_factory=dict)
    oracles: dict[tuple[int, str], OracleOutcome] = field(default_factory=dict)
    memory_iterations: frozenset[int] = frozenset()
    clusters: dict[str, ObservedCluster] = field(default_factory=dict)
    approvals: dict[str, str] = field(default_factory=dict)
    aborted_by: str | None = None
    uid: str = ""
    memory_conflict: str | None = None
    created: dict[str, str] = field(default_factory=dict)
    """Pods this operator process created, by name, with the uid the apiserver gave them."""
    write_rejected: tuple[str, str] | None = None
    """A write of this run's that the apiserver refused for good: (reason, message)."""
    drift: dict[tuple[int, str], DriftOutcome] = field(default_factory=dict)
    """Drift measured for (iteration, cluster)."""
    token_expiry: dict[str, str] = field(default_factory=dict)
    """For each target cluster, when the token minted for its latest agent pod expires."""
    placed_cleaned: frozenset[str] = frozenset()
    """Placed pods whose inputs and kubeconfig are gone from their target cluster."""
    resumes: dict[int, str] = field(default_factory=dict)
    """Paused iterations a human resumed (``kloop.dev/resume``), with who resumed them."""
    connectors: dict[tuple[str, str], ConnectorOutcome] = field(default_factory=dict)
    """MCP handshakes the I/O layer made, by (stage, connector)."""


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable a pod takes from a key of a Secret (the value never passes here)."""

    name: str
    secret: str
    key: str


@dataclass(frozen=True)
class Checkout:
    """A pod's git checkout in ``/kloop/workspace`` (``spec.workspace.git``), as decided.

    ``start`` is fetched (``ref``, or the previous iteration's branch); when ``commit`` is set,
    exactly that commit is checked out. The pod works on ``branch``; a maker's is pushed when it
    ends if ``push``; a checker's checkout is mounted read-only.
    """

    branch: str
    start: str
    commit: str | None = None
    push: bool = False
    read_only: bool = False
    base: str | None = None
    """For checkers: the commit the maker started at, so the kit diffs exactly its work."""


@dataclass(frozen=True)
class PodRequest:
    """A pod the core wants to exist, described by role; the I/O layer renders the manifest."""

    name: str
    role: Role
    iteration: int
    stage: str
    cluster: str
    checker: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    in_target: bool = False
    """Create the pod inside the target cluster (placement Target), not in the run's namespace."""
    secret_env: tuple[SecretEnv, ...] = ()
    """Variables from Secrets of the run's namespace (connector headers)."""
    workspace: Checkout | None = None
    """The git checkout the pod gets, if any."""


@dataclass(frozen=True)
class CreatePod:
    """Create the pod unless it exists (names are deterministic, so this is idempotent)."""

    pod: PodRequest


@dataclass(frozen=True)
class DeletePod:
    """Delete a pod that outlived its timeout or its run's decision."""

    name: str
    why: str


@dataclass(frozen=True)
class EvaluateOracle:
    """Query an HTTP oracle for a checker of an iteration."""

    iteration: int
    checker: str


@dataclass(frozen=True)
class AppendMemory:
    """Record a finished iteration in the loop's memory ConfigMap (skipped if already there)."""

    entry: dict[str, Any]


@dataclass(frozen=True)
class RecordEvent:
    """A Kubernetes Event on the LoopRun; reason equals a condition reason."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class MeasureDrift:
    """Measure drift of a stage's desired objects in one target cluster, for an iteration."""

    iteration: int
    stage: str
    cluster: str


@dataclass(frozen=True)
class CheckConnector:
    """MCP handshake (initialize + tools/list) with a connector, before a stage's first pod."""

    stage: str
    connector: str


Action = (
    CreatePod
    | DeletePod
    | EvaluateOracle
    | MeasureDrift
    | CheckConnector
    | AppendMemory
    | RecordEvent
)


@dataclass(frozen=True)
class Decision:
    """The core's answer: the new status, what to do, and when to look again."""

    status: LoopRunStatus
    actions: list[Action]
    requeue_after: float | None
    why: str

    @property
    def done(self) -> bool:
        """Nothing more will happen to this run."""
        return run_is_over(self.status)


def run_is_over(status: LoopRunStatus) -> bool:
    """A final phase, and no teardown still running."""
    teardown_done = status.teardown is None or status.teardown.state != TeardownState.RUNNING
    finished = status.phase is not None and status.phase.finished
    return finished and teardown_done and not status.placed_pods  # targets cleaned up too
