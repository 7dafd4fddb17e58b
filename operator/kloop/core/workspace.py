"""Workspaces as worktrees: which commit a pod checks out, and what its push proves.

Every maker gets its own branch (``names.branch``), cloned by kloop's init container from the
previous iteration's pushed commit of the same target (work accumulates) or else from ``ref``.
With ``push: true`` kloop's sidecar pushes the maker's commits when the maker ends, so the
record holds what was committed, not what the maker says it did: checkers get exactly that
commit, read-only. Both containers report in their termination messages
(``kloop.api.gitreport``); this module reads those reports, without I/O.
"""

from __future__ import annotations

from datetime import datetime

from kloop.api.conditions import Reason
from kloop.api.gitreport import GitError, parse_git_report
from kloop.api.loop import LoopSpec
from kloop.api.looprun import IterationRecord, LoopRunStatus, MakerRecord, Outcome, WorkspaceRecord
from kloop.core import names
from kloop.core.feedback import previous_record
from kloop.core.model import Checkout, ObservedPod

CLONE_CONTAINER = "kloop-workspace"
"""The init container that clones (every pod with a workspace)."""
PUSH_CONTAINER = "kloop-push"
"""The native sidecar that pushes when the maker ends (makers with ``push: true``)."""

NO_NEW_COMMIT = (
    "the maker reported outcome 'changed' but pushed no new commit: {branch} is still at "
    "{commit}, where it started. Only committed work is pushed and graded: commit your changes "
    "(git add -A && git commit) before you report."
)


def maker_checkout(
    spec: LoopSpec, status: LoopRunStatus, run: str, stage: str, cluster: str, number: int
) -> Checkout | None:
    """The maker's checkout: its own branch, from the target's last pushed commit or ``ref``.

    Only a pushed commit can be continued (an unpushed checkout died with its pod); targets
    never read each other's records, so parallel targets never share a branch or a base.
    """
    if spec.workspace is None:
        return None
    git = spec.workspace.git
    branch = names.branch(run, stage, cluster, number)
    previous = previous_record(status, stage, cluster, number)
    pushed = previous.workspace if previous is not None else None
    if git.push and pushed is not None and pushed.commit:
        return Checkout(branch, pushed.branch, commit=pushed.commit, push=True)
    return Checkout(branch, git.ref, push=git.push)


def checker_checkout(spec: LoopSpec, record: IterationRecord) -> Checkout | None:
    """The checkers' checkout: exactly the commit kloop pushed for the maker, read-only.

    Without a pushed commit (``push: false``) there is nothing kloop could vouch for, so
    checkers get no workspace rather than a checkout the maker never touched.
    """
    pushed = record.workspace
    if spec.workspace is None or pushed is None or not pushed.commit:
        return None
    return Checkout(
        pushed.branch, pushed.branch, commit=pushed.commit, read_only=True, base=pushed.base
    )


def record_for(checkout: Checkout) -> WorkspaceRecord:
    """What status holds of a maker's checkout when its pod is asked for."""
    return WorkspaceRecord(branch=checkout.branch, started_from=checkout.start)


def _error_reason(error: GitError | None, default: Reason) -> Reason:
    return Reason(error.value) if error is not None else default


def checkout_error(pod: ObservedPod) -> tuple[Reason, str] | None:
    """Why the pod's checkout failed (its clone container exited non-zero), if it did."""
    clone = pod.kloop_containers.get(CLONE_CONTAINER)
    if clone is None or not clone.terminated or clone.exit_code in (0, None):
        return None
    report = parse_git_report(clone.message)
    if report is None:
        return Reason.CHECKOUT_FAILED, f"the workspace clone exited with code {clone.exit_code}"
    reason = _error_reason(report.error, Reason.CHECKOUT_FAILED)
    return reason, f"workspace checkout failed: {report.message or reason.value}"


def _cloned_commit(pod: ObservedPod) -> str | None:
    clone = pod.kloop_containers.get(CLONE_CONTAINER)
    report = parse_git_report(clone.message if clone is not None else None)
    return report.commit if report is not None and report.error is None else None


PUSH_REPORT_GRACE_SECONDS = 120
"""How long past the maker's timeout kloop waits for a push that has not reported."""


def push_pending(pod: ObservedPod, timeout_seconds: int, now: datetime) -> bool:
    """The maker ended but kloop's push has not reported yet: wait for it (bounded).

    Kubernetes may call the pod Succeeded before its sidecar has stopped; the record is written
    once the push reported, or once waiting longer cannot help.
    """
    push = pod.kloop_containers.get(PUSH_CONTAINER)
    if push is None or push.terminated or pod.deleting or pod.created_at is None:
        return False
    waited = (now - pod.created_at).total_seconds()
    return waited < timeout_seconds + PUSH_REPORT_GRACE_SECONDS


def settle_maker(record: IterationRecord, maker: MakerRecord, pod: ObservedPod) -> MakerRecord:
    """Fill the iteration's workspace record from the pod's reports; the maker's record back.

    A failed push turns the maker's outcome into an error with the push's reason (a conflict or
    an unreachable remote is never a silent success). A maker that says ``changed`` but pushed
    no new commit keeps its outcome; the note goes to status and to the next maker's feedback.
    """
    workspace = record.workspace
    if workspace is None:
        return maker
    workspace.base = _cloned_commit(pod) or workspace.base
    if PUSH_CONTAINER not in pod.kloop_containers:
        return maker  # push: false, the checkout was the maker's scratch space
    push = pod.kloop_containers[PUSH_CONTAINER]
    report = parse_git_report(push.message if push.terminated else None)
    failure: tuple[Reason, str] | None = None
    if report is None:
        failure = (
            Reason.PUSH_FAILED,
            "kloop's push did not report: it did not finish within the pod's "
            "terminationGracePeriodSeconds, or the pod went away",
        )
    elif report.error is not None:
        failure = (
            Reason(report.error.value),
            f"push of {workspace.branch} failed: {report.message}",
        )
    else:
        workspace.commit = report.commit
    if failure is not None:
        if maker.outcome == Outcome.ERROR:
            return maker  # the maker's own error comes first
        reason, message = failure
        summary = f"{message} (the maker said: {maker.outcome}: {maker.summary})"
        return maker.model_copy(
            update={
                "outcome": Outcome.ERROR,
                "summary": summary[:4096],
                "error_reason": reason.value,
            }
        )
    if (
        maker.outcome == Outcome.CHANGED
        and workspace.commit is not None
        and workspace.commit == workspace.base
    ):
        workspace.note = NO_NEW_COMMIT.format(branch=workspace.branch, commit=workspace.commit[:12])
    return maker
