"""What each command asks of the cluster, decided from what it read: pure, so unit-tested.

Annotation values follow the operator's reading of them (adapters/observe.py): approvals and
resumes are comma lists, and the approver is whoever ``approved-by`` / ``resumed-by`` names, which
the kloop-approvals admission policy ties to the authenticated user (docs/admission.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kloop.cli.exits import CliError, ExitCode
from kloop.core import names
from kloop.core.launch import RunRequest, run_name

Json = dict[str, Any]
ANNOTATION_STARTED_BY = "kloop.dev/started-by"
FINAL_PHASES = ("Succeeded", "Failed", "Halted")
ROLES = ("maker", "checker", "teardown")


def parse_context(pairs: Sequence[str]) -> dict[str, str]:
    """``--context key=value`` options as a dict (later keys win, values stay strings)."""
    context: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--context wants key=value, got {pair!r}", ExitCode.USAGE)
        context[key.strip()] = value
    return context


def manual_run(loop: str, context: dict[str, str], user: str | None, now: datetime) -> RunRequest:
    """A run started by hand: ``<loop>-manual-<UTC time>``, with who started it.

    Seconds make the name unique enough for people; a clash is refused by the apiserver (409)
    rather than overwriting a run.
    """
    recorded = {ANNOTATION_STARTED_BY: user} if user else {}
    return RunRequest(
        name=run_name(loop, f"manual-{now:%Y%m%d-%H%M%S}"),
        cause=f"started by {user or 'someone'} with kubectl kloop",
        context=context,
        annotations=recorded,
    )


def status(run: Json) -> Json:
    """The run's status (empty before the operator's first pass)."""
    found: Json = run.get("status") or {}
    return found


def annotations_of(obj: Json) -> dict[str, str]:
    """An object's annotations."""
    found: dict[str, str] = obj.get("metadata", {}).get("annotations") or {}
    return found


def is_finished(run: Json) -> bool:
    """Final phase reached and the teardown (if any) over: nothing more will change."""
    s = status(run)
    return s.get("phase") in FINAL_PHASES and (s.get("teardown") or {}).get("state") != "Running"


def stage_to_approve(run: Json, stage: str | None) -> str:
    """The stage named, else the one the run waits at; a stage must exist in the run's status.

    Approving ahead of time (a stage not yet reached) is allowed when the stage is named.
    """
    s = status(run)
    known = [st.get("name") for st in s.get("stages") or []]
    if stage is None:
        if s.get("phase") != "AwaitingApproval" or not s.get("stage"):
            raise CliError(
                f"{run['metadata']['name']} is not awaiting approval (phase "
                f"{s.get('phase') or 'unknown'}): name the stage with --stage",
                ExitCode.USAGE,
            )
        return str(s["stage"])
    if known and stage not in known:
        raise CliError(
            f"{run['metadata']['name']} has no stage {stage!r} (stages: {', '.join(known)})",
            ExitCode.USAGE,
        )
    return stage


def approval(run: Json, stage: str, user: str) -> dict[str, str]:
    """Annotations that approve ``stage`` as ``user`` (added to any stages approved before)."""
    current = annotations_of(run).get(names.ANNOTATION_APPROVE) or ""
    stages = [s.strip() for s in current.split(",") if s.strip()]
    if stage not in stages:
        stages.append(stage)
    return {names.ANNOTATION_APPROVE: ",".join(stages), names.ANNOTATION_APPROVED_BY: user}


def paused_iterations(run: Json) -> list[int]:
    """The iteration each paused target of the current stage stopped at (what resume takes)."""
    s = status(run)
    out: list[int] = []
    for stage in s.get("stages") or []:
        for cluster in stage.get("clusters") or []:
            if cluster.get("state") != "Paused":
                continue
            records = [
                it
                for it in s.get("iterations") or []
                if it.get("stage") == stage.get("name") and it.get("cluster") == cluster["name"]
            ]
            if records:
                out.append(int(records[-1]["number"]))
    return sorted(set(out))


def iteration_to_resume(run: Json, iteration: int | None) -> int:
    """The paused iteration to resume: the one given (it must be paused), or the only one."""
    paused = paused_iterations(run)
    name = run["metadata"]["name"]
    if not paused:
        phase = status(run).get("phase") or "unknown"
        raise CliError(f"{name} has no paused iteration (phase {phase})", ExitCode.USAGE)
    if iteration is None:
        if len(paused) > 1:
            listed = ", ".join(str(n) for n in paused)
            raise CliError(
                f"{name} has several paused iterations ({listed}): pick one with --iteration",
                ExitCode.USAGE,
            )
        return paused[0]
    if iteration not in paused:
        listed = ", ".join(str(n) for n in paused)
        raise CliError(
            f"iteration {iteration} of {name} is not paused (paused: {listed})", ExitCode.USAGE
        )
    return iteration


def resumption(run: Json, iteration: int, user: str) -> dict[str, str]:
    """Annotations that resume ``iteration`` as ``user`` (added to earlier resumes)."""
    current = annotations_of(run).get(names.ANNOTATION_RESUME) or ""
    numbers = [n.strip() for n in current.split(",") if n.strip()]
    if str(iteration) not in numbers:
        numbers.append(str(iteration))
    return {names.ANNOTATION_RESUME: ",".join(numbers), names.ANNOTATION_RESUMED_BY: user}


def abortion(user: str | None) -> dict[str, str]:
    """Annotations that abort a run, saying who asked."""
    return {
        names.ANNOTATION_ABORT: "true",
        names.ANNOTATION_ABORT_REASON: f"requested by {user or 'someone'}",
    }


def pod_selector(run: str, iteration: int | None, role: str | None, cluster: str | None) -> str:
    """The label selector for a run's pods, narrowed by the ``logs`` options."""
    parts = [f"{names.LABEL_RUN}={run}"]
    if iteration is not None:
        parts.append(f"{names.LABEL_ITERATION}={iteration}")
    if role is not None:
        parts.append(f"{names.LABEL_ROLE}={role}")
    if cluster is not None:
        parts.append(f"{names.LABEL_CLUSTER}={cluster}")
    return ",".join(parts)


def oldest_first(pods: list[Json]) -> list[Json]:
    """Pods in the order they were created (then by name, for pods created the same second)."""
    return sorted(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])
    )
