"""The Loop: a goal that prompts itself, with its maker, checkers, memory, budget and stages."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from kloop.api.base import KubeModel, cel
from kloop.api.conditions import Condition
from kloop.api.cron import CRON_REGEX, is_valid_cron
from kloop.api.pod import DNS_LABEL, DNS_SUBDOMAIN, PodTemplate

DRIFT_GRADER = "drift"
"""The name drift verdicts are recorded under, next to the checkers' (reserved)."""

Name = Annotated[str, StringConstraints(max_length=63, pattern=DNS_LABEL)]
ObjectName = Annotated[str, StringConstraints(max_length=253, pattern=DNS_SUBDOMAIN)]


class Pricing(KubeModel):
    """What a model's tokens cost, in US dollars per million tokens (the providers' unit).

    Passed to agent pods as KLOOP_PRICE_* variables; ``kloop-agent run`` multiplies the model's
    own usage numbers by them to report ``costUSD``.
    """

    input_usd_per_mtok: float = Field(ge=0, le=10**6, alias="inputUSDPerMTok")
    """Price of a million prompt (input) tokens."""
    output_usd_per_mtok: float = Field(ge=0, le=10**6, alias="outputUSDPerMTok")
    """Price of a million completion (output) tokens."""
    cached_input_usd_per_mtok: float | None = Field(
        default=None, ge=0, le=10**6, alias="cachedInputUSDPerMTok"
    )
    """Price of a million input tokens read from the provider's prompt cache (default: the
    input price)."""


class Maker(KubeModel):
    """The agent that does the work in each iteration."""

    template: PodTemplate
    """The maker's pod template."""
    timeout_seconds: int = Field(default=900, ge=1, le=86400)
    """Wall-clock limit for one maker pod; past it the iteration is an error (timeout)."""
    pricing: Pricing | None = None
    """The maker's model prices (default: spec.pricing)."""


class CheckerKind(StrEnum):
    """How a checker grades: a pod of its own, or an HTTP query."""

    POD = "pod"
    HTTP = "http"


class HttpMethod(StrEnum):
    """HTTP methods an oracle may use."""

    GET = "GET"
    POST = "POST"


class HttpOracle(KubeModel):
    """An HTTP query whose JSON answer decides pass or fail (like an Argo Rollouts analysis)."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    """The URL to query."""
    method: HttpMethod = HttpMethod.GET
    """HTTP method."""
    body: str | None = Field(default=None, max_length=65536)
    """Request body for POST."""
    json_path: str = Field(min_length=1, max_length=512, pattern=r"^\$")
    """Where the value is in the JSON answer, e.g. ``$.data.result[0].value[1]``."""
    pass_if: str = Field(min_length=2, max_length=256, pattern=r"^\s*(<=|>=|==|!=|<|>)\s*\S.*$")
    """Pass condition on the value: an operator and an operand, e.g. ``< 0.01`` or ``== ok``."""
    timeout_seconds: int = Field(default=30, ge=1, le=600)
    """One deadline for the whole query: resolution, connection, every read and retries."""


class Placement(StrEnum):
    """Where a pod checker runs."""

    MANAGEMENT = "Management"
    TARGET = "Target"


class Checker(KubeModel):
    """A grader that is not the maker: a pod (another image, command or args) or an HTTP oracle."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.kind == 'pod' ? (has(self.template) && !has(self.http))"
                    " : (has(self.http) && !has(self.template))",
                    "a checker of kind pod needs template (and no http); "
                    "kind http needs http (and no template)",
                ),
                cel(
                    "self.kind == 'pod' || !has(self.placement) || self.placement == 'Management'",
                    "placement Target is for pod checkers: an HTTP oracle is asked by the operator",
                ),
            ]
        }
    }

    name: Name
    """Checker name, unique in the Loop; it names the checker's pods."""
    kind: CheckerKind = CheckerKind.POD
    """pod or http."""
    template: PodTemplate | None = None
    """The checker's pod template (kind pod)."""
    http: HttpOracle | None = None
    """The HTTP oracle (kind http)."""
    timeout_seconds: int = Field(default=600, ge=1, le=86400)
    """Wall-clock limit for the checker."""
    placement: Placement = Placement.MANAGEMENT
    """Management: the pod runs in the operator's cluster, in the run's namespace, and acts on
    its target through /kloop/target/kubeconfig (hub and spoke). Target: it runs inside the
    target cluster, in the namespace of the cluster Secret's agent ServiceAccount, for checks that
    must run in that cluster's network (pod checkers of remote targets only; no /kloop/memory)."""
    retries: int = Field(default=0, ge=0, le=5)
    """How often a pod checker that errored (failed, timed out, was lost or untrusted) is run
    again in the same iteration before its error fails the target. HTTP oracles retry their
    transport errors within timeoutSeconds; their error verdicts are policy refusals."""
    pricing: Pricing | None = None
    """This checker's model prices, e.g. a cheaper judge model (default: spec.pricing)."""


class Memory(KubeModel):
    """Where the loop remembers what was done, what is next and what failed."""

    config_map_name: ObjectName | None = None
    """ConfigMap holding the memory; defaults to ``<loop>-memory``."""
    max_bytes: int = Field(default=524288, ge=4096, le=921600)
    """Compact older entries before the memory grows past this (below the 1 MiB object limit)."""
    keep_iterations: int = Field(default=10, ge=1, le=200)
    """How many detailed iteration entries to keep before older ones become a summary."""


class Budget(KubeModel):
    """Caps that halt a run: every loop is bounded."""

    max_iterations: int = Field(default=5, ge=1, le=1000)
    """Iterations per cluster of each stage (for a Loop without stages: per run), unless the
    stage sets its own maxIterations."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Total tokens the agents may report before the run halts with TokenBudget."""
    max_cost_usd: float | None = Field(default=None, gt=0, alias="maxCostUSD")
    """Total cost in USD the agents may report before the run halts with CostBudget."""
    deadline_seconds: int | None = Field(default=None, ge=1)
    """Wall-clock limit of a run; past it the run halts with Deadline."""


class LabelSelectorRequirement(KubeModel):
    """One label-selector expression."""

    key: str = Field(max_length=317)
    """Label key."""
    operator: str = Field(pattern=r"^(In|NotIn|Exists|DoesNotExist)$")
    """In, NotIn, Exists or DoesNotExist."""
    values: list[Annotated[str, StringConstraints(max_length=63)]] | None = Field(
        default=None, max_length=64
    )
    """Values for In and NotIn."""


class LabelSelector(KubeModel):
    """Selects cluster Secrets by label."""

    match_labels: dict[str, Annotated[str, StringConstraints(max_length=63)]] | None = None
    """Labels a cluster must have."""
    match_expressions: list[LabelSelectorRequirement] | None = Field(default=None, max_length=16)
    """Label expressions a cluster must satisfy."""


class DriftAction(StrEnum):
    """What a stage does when drift exceeds its bound."""

    HALT = "Halt"
    ITERATE = "Iterate"


class FailurePolicy(StrEnum):
    """What a stage does when one of its clusters fails."""

    HALT = "Halt"
    CONTINUE = "Continue"


class Drift(KubeModel):
    """How much a stage's clusters may differ from the desired manifests."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "has(self.resources) != has(self.manifestsConfigMap)",
                    "drift needs exactly one of resources or manifestsConfigMap",
                )
            ]
        }
    }

    resources: list[dict[str, object]] | None = Field(
        default=None,
        max_length=256,
        json_schema_extra={
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    )
    """Desired manifests inline."""
    manifests_config_map: ObjectName | None = None
    """A ConfigMap whose keys hold the desired manifests."""
    max_drifted_objects: int = Field(default=0, ge=0)
    """A stage passes only with at most this many drifted objects per cluster."""
    on_exceeded: DriftAction = DriftAction.HALT
    """Halt: the run halts with DriftExceeded. Iterate: the maker gets the drifted objects in
    /kloop/feedback.json and tries again (within the stage's iterations)."""


class Stage(KubeModel):
    """One step of a staged rollout: a set of clusters that must all pass before the next."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "has(self.clusterSelector) != has(self.clusters)",
                    "a stage needs exactly one of clusterSelector or clusters",
                )
            ]
        }
    }

    name: Name
    """Stage name, unique in the Loop."""
    cluster_selector: LabelSelector | None = None
    """Select target clusters by label (exclusive with clusters)."""
    clusters: list[Name] | None = Field(default=None, min_length=1, max_length=64)
    """Target clusters by name (exclusive with clusterSelector)."""
    require_approval: bool = False
    """Wait for an approval before this stage starts."""
    max_iterations: int | None = Field(default=None, ge=1, le=1000)
    """Iteration cap of this stage; defaults to budget.maxIterations."""
    drift: Drift | None = None
    """Drift bounds for this stage's clusters, measured by the operator after each maker."""
    max_parallel: int | None = Field(default=None, ge=1, le=64)
    """How many clusters of the stage run their inner loops at once (default: all)."""
    failure_policy: FailurePolicy = FailurePolicy.HALT
    """Halt: a failed cluster halts the run. Continue: the stage goes on, and passes if at most
    maxFailedClusters of its clusters failed."""
    max_failed_clusters: int = Field(default=0, ge=0, le=64)
    """With failurePolicy Continue, how many clusters may fail before the run halts."""


class SkillRef(KubeModel):
    """A ConfigMap of written-down intent mounted at ``/kloop/skills/<name>/``."""

    config_map_name: ObjectName
    """The ConfigMap's name."""


class Teardown(KubeModel):
    """A pod that runs at most once when a run ends, whatever the outcome (see docs/runs.md)."""

    template: PodTemplate
    """The teardown pod template."""
    timeout_seconds: int = Field(default=300, ge=1, le=86400)
    """Wall-clock limit for the teardown pod."""


class ConcurrencyPolicy(StrEnum):
    """What a scheduled run does when the previous one still runs."""

    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class NotifyEvent(StrEnum):
    """Moments a notification can be sent for."""

    STAGE_STARTED = "stage-started"
    AWAITING_APPROVAL = "awaiting-approval"
    PAUSED = "paused"
    HALTED = "halted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ITERATION_STARTED = "iteration-started"
    ITERATION_FINISHED = "iteration-finished"


class SecretKeyRef(KubeModel):
    """A key of a Secret in the Loop's namespace."""

    name: ObjectName
    """Secret name."""
    key: str = Field(min_length=1, max_length=253)
    """Key in the Secret."""


class SecretRef(KubeModel):
    """A Secret in the Loop's namespace."""

    name: ObjectName
    """Secret name."""


class NotifyTarget(KubeModel):
    """A webhook called at lifecycle points of a run."""

    name: Name
    """Target name."""
    url_secret_ref: SecretKeyRef
    """Where the webhook URL is kept (URLs often carry tokens)."""
    events: list[NotifyEvent] = Field(min_length=1, max_length=8)
    """Which events to send (see docs/notifications.md)."""


class GitWorkspace(KubeModel):
    """A git repository every maker checks out on its own branch."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://[^/@\s]+(/\S*)?$")
    """Repository URL (http or https; credentials belong in secretRef, not in the URL)."""
    ref: str = Field(
        default="main", min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"
    )
    """Branch, tag or commit the first iteration of each target starts from."""
    secret_ref: SecretRef | None = None
    """Credentials for clone and push: keys ``username`` and ``password``, or ``token``."""
    push: bool = False
    """Push the maker's commits to its branch when it ends."""


class Workspace(KubeModel):
    """Files the agents work on."""

    git: GitWorkspace
    """A git checkout per pod."""


class ConnectorRole(StrEnum):
    """Which pods may use a connector."""

    MAKER = "maker"
    CHECKER = "checker"
    TEARDOWN = "teardown"


class McpServer(KubeModel):
    """An MCP server endpoint."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    """Streamable HTTP endpoint of the server."""
    headers_secret_ref: SecretRef | None = None
    """A Secret in the Loop's namespace whose keys are sent as HTTP headers (e.g. Authorization):
    by the operator's handshake, and by agents through environment variables."""


class Connector(KubeModel):
    """An MCP server the agents may use."""

    name: Name
    """Connector name (the key in /kloop/mcp.json)."""
    mcp: McpServer
    """The server."""
    tools: list[Annotated[str, StringConstraints(max_length=128)]] = Field(
        default_factory=list, max_length=64
    )
    """Tools that must exist on the server; a missing one halts the run before it starts."""
    roles: list[ConnectorRole] = Field(
        default_factory=lambda: [ConnectorRole.MAKER], min_length=1, max_length=3
    )
    """Which pods get the connector in /kloop/mcp.json (maker, checker, teardown)."""


class WebhookProvider(StrEnum):
    """Who sends the webhook, which decides how it is authenticated (docs/automations.md)."""

    GITHUB = "github"
    GITLAB = "gitlab"
    GENERIC = "generic"


class WebhookTrigger(KubeModel):
    """Start a run when a release tag is pushed, told by a signed webhook (Flux Receiver style)."""

    provider: WebhookProvider
    """github (X-Hub-Signature-256), gitlab (X-Gitlab-Token) or generic (X-Signature HMAC)."""
    secret_ref: SecretRef
    """A Secret whose key ``token`` is the shared secret; the receiver path derives from it."""


class GitPollTrigger(KubeModel):
    """Start a run per new tag of a repository that cannot send webhooks (``git ls-remote``)."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    """Repository URL (http or https; reached through the operator's egress guard)."""
    secret_ref: SecretRef | None = None
    """Credentials: keys ``username`` and ``password`` (a token as password suits most hosts)."""
    interval: str = Field(default="5m", pattern=r"^[1-9][0-9]{0,5}(s|m|h)$")
    """How often to list the remote tags, e.g. 30s, 5m, 1h (at least 10s)."""


class Trigger(KubeModel):
    """Something outside the cluster that starts runs: a release tag, by webhook or by polling."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "has(self.webhook) != has(self.git)",
                    "a trigger has exactly one of webhook or git",
                ),
            ]
        }
    }

    name: Name
    """Trigger name (unique in the Loop; part of the webhook's receiver path)."""
    tag_pattern: str | None = Field(default=None, min_length=1, max_length=128)
    """Which tags start runs: a glob ``v*`` or a semver range (``>=1.2.0,<2.0.0``); default: all."""
    webhook: WebhookTrigger | None = None
    """Runs start when a signed push or tag event arrives on the webhook receiver."""
    git: GitPollTrigger | None = None
    """Runs start when polling finds a new tag."""

    @model_validator(mode="after")
    def _one_source(self) -> Trigger:
        if (self.webhook is None) == (self.git is None):
            raise ValueError(f"trigger {self.name!r} needs exactly one of webhook or git")
        return self


_POD_CHECKER_DIFFERS = (
    "self.checkers.all(c, c.kind != 'pod' || !has(c.template) || !("
    "c.template.spec.containers[0].image == self.maker.template.spec.containers[0].image && "
    "(has(c.template.spec.containers[0].command) ? c.template.spec.containers[0].command : [])"
    " == (has(self.maker.template.spec.containers[0].command) ?"
    " self.maker.template.spec.containers[0].command : []) && "
    "(has(c.template.spec.containers[0].args) ? c.template.spec.containers[0].args : [])"
    " == (has(self.maker.template.spec.containers[0].args) ?"
    " self.maker.template.spec.containers[0].args : [])))"
)


class LoopSpec(KubeModel):
    """What the loop is for and how it runs."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    _POD_CHECKER_DIFFERS,
                    "a pod checker must differ from the maker (another image, command or args):"
                    " the maker never grades its own work",
                    ".checkers",
                ),
                cel(
                    "self.checkers.all(c, self.checkers.exists_one(d, d.name == c.name))",
                    "checker names must be unique",
                    ".checkers",
                ),
                cel(
                    "self.checkers.all(c, c.name != 'drift')",
                    "the checker name 'drift' is reserved for the operator's own drift check",
                    ".checkers",
                ),
                cel(
                    "!has(self.stages) || self.stages.all(s, "
                    "self.stages.exists_one(t, t.name == s.name))",
                    "stage names must be unique",
                    ".stages",
                ),
                cel(
                    "!has(self.triggers) || self.triggers.all(t, "
                    "self.triggers.exists_one(u, u.name == t.name))",
                    "trigger names must be unique",
                    ".triggers",
                ),
                cel(
                    "!has(self.connectors) || self.connectors.all(c, "
                    "self.connectors.exists_one(d, d.name == c.name))",
                    "connector names must be unique",
                    ".connectors",
                ),
                cel(
                    f"!has(self.schedule) || self.schedule.matches('{CRON_REGEX}')",
                    "schedule must be a cron expression of five fields (minute hour day-of-month"
                    " month day-of-week), e.g. '0 6 * * 1-5', or a macro such as @daily",
                    ".schedule",
                ),
            ]
        }
    }

    goal: str = Field(min_length=1, max_length=16384)
    """The purpose, handed to every agent as KLOOP_GOAL."""
    maker: Maker
    """The agent doing the work."""
    checkers: list[Checker] = Field(min_length=1, max_length=16)
    """Graders of the maker's work; every one must pass."""
    memory: Memory = Field(default_factory=Memory)
    """What the next agent reads about earlier iterations."""
    budget: Budget = Field(default_factory=Budget)
    """Caps on iterations, tokens, cost and time."""
    stages: list[Stage] | None = Field(default=None, min_length=1, max_length=20)
    """Ordered rollout stages; without them one implicit stage runs in this cluster."""
    skills: list[SkillRef] | None = Field(default=None, max_length=16)
    """ConfigMaps of conventions and runbooks mounted into every agent pod."""
    teardown: Teardown | None = None
    """A pod that runs at most once when a run ends."""
    schedule: str | None = Field(default=None, max_length=128)
    """Cron schedule for starting runs, with CronJob's semantics (docs/automations.md)."""
    time_zone: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_+\-/]+$")
    """IANA time zone of the schedule (default UTC)."""
    suspend: bool = False
    """Start no new scheduled runs."""
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.FORBID
    """What a scheduled or triggered run does while another run of this Loop is active."""
    starting_deadline_seconds: int | None = Field(default=None, ge=1)
    """A scheduled time missed by more than this is skipped (default: never too late)."""
    successful_runs_history_limit: int = Field(default=3, ge=0, le=100)
    """Finished successful runs to keep."""
    failed_runs_history_limit: int = Field(default=3, ge=0, le=100)
    """Finished failed or halted runs to keep."""
    triggers: list[Trigger] | None = Field(default=None, max_length=8)
    """Release tags that start runs: by webhook or by polling a repository (docs/automations.md)."""
    notify: list[NotifyTarget] | None = Field(default=None, max_length=8)
    """Webhooks called at lifecycle points of each run (docs/notifications.md)."""
    workspace: Workspace | None = None
    """Files the agents work on (validated; the git checkout is not built yet)."""
    connectors: list[Connector] | None = Field(default=None, max_length=16)
    """MCP servers the agents may use: checked before each stage's first pod, written to
    /kloop/mcp.json in the pods of their roles (docs/agents.md)."""
    pricing: Pricing | None = None
    """Model prices of the agents that do not set their own: what ``kloop-agent run`` charges
    per token of the model's reported usage (docs/agents.md)."""
    status_iterations: int = Field(default=10, ge=1, le=50)
    """Detailed iteration records a LoopRun keeps in status; older ones are folded into
    status.earlierIterations (counts and last failures). Records are shortened to fit a fixed
    byte budget shared by all of them, so fewer records keep more detail each."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> LoopSpec:
        """The CEL rules again, for objects that reached us without admission (e.g. tests)."""
        maker = self.maker.template.spec.containers[0]
        for checker in self.checkers:
            if checker.kind is CheckerKind.POD and checker.template is not None:
                c = checker.template.spec.containers[0]
                if (c.image, c.command or [], c.args or []) == (
                    maker.image,
                    maker.command or [],
                    maker.args or [],
                ):
                    raise ValueError(
                        f"checker {checker.name!r} is the maker: a pod checker must "
                        "differ from the maker (another image, command or args)"
                    )
        names = [c.name for c in self.checkers]
        if len(set(names)) != len(names):
            raise ValueError("checker names must be unique")
        if DRIFT_GRADER in names:
            raise ValueError("the checker name 'drift' is reserved for the operator's drift check")
        if self.stages and len({s.name for s in self.stages}) != len(self.stages):
            raise ValueError("stage names must be unique")
        if self.triggers and len({t.name for t in self.triggers}) != len(self.triggers):
            raise ValueError("trigger names must be unique")
        if self.connectors and len({c.name for c in self.connectors}) != len(self.connectors):
            raise ValueError("connector names must be unique")
        if self.schedule is not None and not is_valid_cron(self.schedule):
            raise ValueError(f"schedule {self.schedule!r} is not a cron expression")
        return self

    def memory_config_map(self, loop_name: str) -> str:
        """The ConfigMap holding this loop's memory."""
        return self.memory.config_map_name or f"{loop_name}-memory"


class TriggerStatus(KubeModel):
    """What one trigger last did."""

    name: Name
    """The trigger."""
    webhook_path: str | None = None
    """Where its webhooks go on the receiver (derived from the secret token, like Flux's)."""
    last_tag: str | None = None
    """Newest tag seen (polling) or accepted (webhook)."""
    last_polled: str | None = None
    """When the repository was last listed."""
    source: str | None = Field(default=None, max_length=64)
    """Fingerprint of the url and tagPattern the polling baseline was taken for."""
    recent_tags: list[str] | None = Field(default=None, max_length=50)
    """Tags that already started a run (newest last), so a tag never runs twice."""
    message: str | None = Field(default=None, max_length=1024)
    """Why the trigger cannot work right now (missing Secret, unreachable remote), if so."""


class LoopStatus(KubeModel):
    """What the operator last saw of the loop's runs."""

    observed_generation: int | None = None
    """The generation last acted upon."""
    last_run: str | None = None
    """Name of the newest LoopRun."""
    phase: str | None = None
    """Phase of the newest LoopRun."""
    last_run_time: str | None = None
    """When the newest LoopRun started."""
    last_successful_run: str | None = None
    """Name of the newest LoopRun that succeeded."""
    last_successful_time: str | None = None
    """When it finished."""
    last_schedule_time: str | None = None
    """The newest scheduled time a run was started (or deliberately skipped) for."""
    next_schedule_time: str | None = None
    """When the schedule fires next (empty when there is no schedule or it is suspended)."""
    active: list[str] | None = None
    """LoopRuns that have not finished."""
    triggers: list[TriggerStatus] | None = None
    """What each trigger last did."""
    conditions: list[Condition] | None = None
    """kstatus conditions (Ready, Reconciling, Stalled)."""
