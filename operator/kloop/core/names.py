"""Deterministic names and labels: a restarted operator finds what exists instead of duplicating."""

from __future__ import annotations

from kloop.core.model import Role

LABEL_RUN = "kloop.dev/run"
LABEL_LOOP = "kloop.dev/loop"
LABEL_ROLE = "kloop.dev/role"
LABEL_ITERATION = "kloop.dev/iteration"
LABEL_STAGE = "kloop.dev/stage"
LABEL_CLUSTER = "kloop.dev/cluster"
LABEL_CHECKER = "kloop.dev/checker"
ANNOTATION_APPROVE = "kloop.dev/approve"
# the user who set kloop.dev/approve; the admission policy checks it is the requester
ANNOTATION_APPROVED_BY = "kloop.dev/approved-by"
ANNOTATION_ABORT = "kloop.dev/abort"
# why, in words, shown after the field manager in the run's message (kubectl kloop abort, Replace)
ANNOTATION_ABORT_REASON = "kloop.dev/abort-reason"
# on runs a schedule started: the scheduled time (RFC 3339, UTC)
ANNOTATION_SCHEDULED_AT = "kloop.dev/scheduled-at"
ANNOTATION_RESUME = "kloop.dev/resume"
ANNOTATION_RESUMED_BY = "kloop.dev/resumed-by"
# on agent pods of a remote target: the uid of their kubeconfig Secret (so only that Secret is
# ever deleted for them) and when its token expires
ANNOTATION_TARGET_SECRET_UID = "kloop.dev/target-secret-uid"
ANNOTATION_TOKEN_EXPIRES_AT = "kloop.dev/token-expires-at"


def pod_name(
    run: str, stage_index: int, cluster: str, iteration: int, role: Role, checker: str | None = None
) -> str:
    """``<run>-s<stage>-<cluster>-i<n>-<role>`` (DESIGN.md §3); checkers add their own name."""
    suffix = role.value if checker is None else f"check-{checker}"
    return f"{run}-s{stage_index}-{cluster}-i{iteration}-{suffix}"


def checker_pod_prefix(run: str, stage_index: int, cluster: str, iteration: int) -> str:
    """What every checker pod name of one iteration starts with."""
    return pod_name(run, stage_index, cluster, iteration, Role.CHECKER, "")


def teardown_pod_name(run: str) -> str:
    """The one teardown pod of a run."""
    return f"{run}-teardown"


def inputs_config_map_name(pod: str) -> str:
    """The ConfigMap carrying a pod's input files (feedback.json, maker.json)."""
    return f"{pod}-in"


def target_secret_name(pod: str) -> str:
    """The Secret holding the kubeconfig (minted token) of a pod acting on a remote cluster."""
    return f"{pod}-target"


def branch(run: str, stage: str, cluster: str, iteration: int) -> str:
    """``kloop/<run>/<stage>-<cluster>-i<n>``: each target's iteration its own git branch.

    The Kubernetes form of a worktree: parallel targets of a stage never share a branch, and the
    next iteration of a target starts from the previous one's.
    """
    return f"kloop/{run}/{stage}-{cluster}-i{iteration}"
