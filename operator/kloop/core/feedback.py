"""What the next agent of a target reads: ``/kloop/feedback.json`` and ``/kloop/maker.json``."""

from __future__ import annotations

import json

from kloop.api.looprun import IterationRecord, LoopRunStatus
from kloop.core.model import ObservedRun


def previous_record(
    s: LoopRunStatus, stage: str, cluster: str, before: int
) -> IterationRecord | None:
    """The target's last decided iteration before iteration ``before``, if status still has it."""
    earlier = [
        r
        for r in s.iterations
        if (r.stage, r.cluster) == (stage, cluster) and r.number < before and r.decision
    ]
    return max(earlier, key=lambda r: r.number, default=None)


def feedback(s: LoopRunStatus, stage: str, cluster: str, iteration: int) -> str:
    """/kloop/feedback.json: the target's previous maker outcome, verdicts and decision."""
    previous = previous_record(s, stage, cluster, iteration)
    if previous is None:
        return json.dumps({"v": 1, "iteration": 0, "verdicts": []})
    return json.dumps(
        {
            "v": 1,
            "iteration": previous.number,
            "stage": previous.stage,
            "cluster": previous.cluster,
            "maker": {
                "outcome": previous.maker.outcome if previous.maker else None,
                "summary": previous.maker.summary if previous.maker else "",
            },
            "verdicts": [
                {"checker": c.name, "verdict": c.verdict, "reasons": c.reasons, "score": c.score}
                for c in previous.checkers
            ],
            "decision": previous.decision,
            "why": previous.why,
            **_workspace(previous),
        }
    )


def _workspace(record: IterationRecord) -> dict[str, dict[str, str | None]]:
    """The previous maker's branch and pushed commit, and what it is told about them."""
    workspace = record.workspace
    if workspace is None:
        return {}
    return {
        "workspace": {
            "branch": workspace.branch,
            "base": workspace.base,
            "commit": workspace.commit,
            "note": workspace.note,
        }
    }


def maker_json(obs: ObservedRun, record: IterationRecord) -> str:
    """/kloop/maker.json for checkers: the maker's own result document."""
    maker_pod = obs.pods.get(record.maker.pod or "") if record.maker else None
    return (maker_pod.message if maker_pod else None) or json.dumps(
        {
            "outcome": record.maker.outcome if record.maker else None,
            "summary": record.maker.summary if record.maker else "",
        }
    )
