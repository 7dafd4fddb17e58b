"""The rollout plan: ordered stages, each with its clusters and iteration cap.

A Loop without stages is one implicit stage in its own cluster, so single-cluster loops and
multi-cluster rollouts go through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

from kloop.api.loop import Drift, FailurePolicy, LabelSelector, LoopSpec
from kloop.api.looprun import BudgetOverride
from kloop.core.model import IMPLICIT_STAGE, LOCAL_CLUSTER, ClusterState, ObservedCluster


@dataclass(frozen=True)
class StagePlan:
    """One stage as the run executes it."""

    index: int
    name: str
    clusters: tuple[str, ...]
    max_iterations: int
    require_approval: bool
    max_parallel: int | None = None
    failure_policy: FailurePolicy = FailurePolicy.HALT
    max_failed_clusters: int = 0
    drift: Drift | None = None

    @property
    def parallel(self) -> int:
        """How many of its clusters may run their inner loops at once."""
        return self.max_parallel or len(self.clusters) or 1

    @property
    def failures_allowed(self) -> int:
        """How many of its clusters may fail without halting the run."""
        return self.max_failed_clusters if self.failure_policy is FailurePolicy.CONTINUE else 0


@dataclass(frozen=True)
class Limits:
    """The effective caps of a run: the Loop's budget with the run's overrides applied."""

    max_iterations: int
    max_tokens: int | None
    max_cost_usd: float | None
    deadline_seconds: int | None


def _lower(cap: float | None, override: float | None) -> float | None:
    """An override may add a cap the Loop lacks or lower one; never raise it."""
    if override is None:
        return cap
    return override if cap is None else min(cap, override)


def compute_limits(loop: LoopSpec, override: BudgetOverride | None) -> Limits:
    """The Loop's budget, each cap lowered (never raised) by the run's override."""
    b, o = loop.budget, override or BudgetOverride()
    tokens = _lower(b.max_tokens, o.max_tokens)
    deadline = _lower(b.deadline_seconds, o.deadline_seconds)
    return Limits(
        max_iterations=min(b.max_iterations, o.max_iterations or b.max_iterations),
        max_tokens=None if tokens is None else int(tokens),
        max_cost_usd=_lower(b.max_cost_usd, o.max_cost_usd),
        deadline_seconds=None if deadline is None else int(deadline),
    )


def _selects(selector: LabelSelector, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.match_labels or {}).items()):
        return False
    for req in selector.match_expressions or []:
        present, value = req.key in labels, labels.get(req.key)
        ok = {
            "In": present and value in (req.values or []),
            "NotIn": not present or value not in (req.values or []),
            "Exists": present,
            "DoesNotExist": not present,
        }[req.operator]
        if not ok:
            return False
    return True


def build_plan(
    loop: LoopSpec, limits: Limits, clusters: dict[str, ObservedCluster]
) -> list[StagePlan]:
    """Stages in order with their clusters.

    A selector chooses among the clusters this run's namespace may use; a cluster named
    explicitly is kept even when it is missing, unavailable or not allowed, so the run says so
    for that target instead of quietly skipping it. ``local`` needs no Secret.
    """
    if not loop.stages:
        return [StagePlan(0, IMPLICIT_STAGE, (LOCAL_CLUSTER,), limits.max_iterations, False)]
    plan = []
    for i, stage in enumerate(loop.stages):
        if stage.clusters:
            names = tuple(stage.clusters)
        else:
            assert stage.cluster_selector is not None
            names = tuple(
                sorted(
                    c.name
                    for c in clusters.values()
                    if c.state is not ClusterState.NOT_ALLOWED
                    and c.name != LOCAL_CLUSTER
                    and _selects(stage.cluster_selector, c.labels)
                )
            )
        plan.append(
            StagePlan(
                i,
                stage.name,
                names,
                min(stage.max_iterations or limits.max_iterations, limits.max_iterations),
                stage.require_approval,
                stage.max_parallel,
                stage.failure_policy,
                stage.max_failed_clusters,
                stage.drift,
            )
        )
    return plan
