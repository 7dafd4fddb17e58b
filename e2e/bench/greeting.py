"""The greeting workload of ``e2e/manifests/greeting-loop.yaml``, emulated without containers.

What each pod's first container would write to its termination message, decided from the pod
alone (its role label and ``KLOOP_ITERATION``), exactly as the shell scripts do: the maker fixes
one mistake per iteration, the checker fails with a reason until iteration 3, the teardown
succeeds with no message (its container writes only to stdout). kloop reads the message and
the exit code from ``status.containerStatuses[first container].state.terminated``
(``kloop.adapters.pods.observe_pod``), so that is all the bench driver has to write.
"""

from __future__ import annotations

import json
from typing import Any

Json = dict[str, Any]
PASSING_ITERATION = 3
_TEXT = {1: "helo wrld", 2: "hello wrld"}
_REASON = {1: "missing letter l in helo", 2: "missing letter o in wrld"}


def _iteration(pod: Json) -> int:
    for var in pod["spec"]["containers"][0].get("env") or []:
        if var.get("name") == "KLOOP_ITERATION":
            return int(var["value"])
    raise ValueError(f"pod {pod['metadata']['name']} has no KLOOP_ITERATION")


def maker_message(iteration: int) -> str:
    """The maker's JSON result; its feedback is the previous checker's reason."""
    text = _TEXT.get(iteration, "hello, world")
    hint = _REASON.get(iteration - 1, "none")
    result = {
        "v": 1,
        "outcome": "changed",
        "summary": f"wrote {text} (feedback: {hint})",
        "tokens": 100,
        "costUSD": 0.01,
        "artifacts": {"greeting": text},
    }
    return json.dumps(result, separators=(",", ":"))


def checker_message(iteration: int) -> str:
    """The checker's verdict: fail with a reason until PASSING_ITERATION, then pass."""
    if iteration >= PASSING_ITERATION:
        verdict = {"v": 1, "verdict": "pass", "reasons": ["greeting is right"]}
    else:
        verdict = {"v": 1, "verdict": "fail", "reasons": [_REASON[iteration]]}
    return json.dumps(verdict, separators=(",", ":"))


def outcome(pod: Json) -> tuple[int, str]:
    """(exit code, termination message) the greeting pod would end with."""
    role = (pod["metadata"].get("labels") or {}).get("kloop.dev/role")
    if role == "maker":
        return 0, maker_message(_iteration(pod))
    if role == "checker":
        return 0, checker_message(_iteration(pod))
    if role == "teardown":
        return 0, ""
    raise ValueError(f"pod {pod['metadata']['name']} has no known kloop.dev/role ({role!r})")


def _container_status(pod: Json, state: Json) -> list[Json]:
    return [
        {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": "running" in state,
            "restartCount": 0,
            "started": "running" in state,
            "state": state,
        }
        for c in pod["spec"]["containers"]
    ]


def running_status(pod: Json, now: str) -> Json:
    """The status a kubelet writes once the containers started (``now``: RFC 3339)."""
    return {
        "status": {
            "phase": "Running",
            "startTime": now,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            "containerStatuses": _container_status(pod, {"running": {"startedAt": now}}),
        }
    }


def finished_status(pod: Json, started: str, now: str) -> Json:
    """Succeeded (or Failed on a non-zero exit) with every container terminated.

    Only the first container carries the greeting's message: it is the one kloop reads.
    """
    code, message = outcome(pod)
    body = running_status(pod, started)
    statuses = body["status"]["containerStatuses"]
    for i, status in enumerate(statuses):
        terminated: Json = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now,
        }
        if i == 0 and message:
            terminated["message"] = message
        status.update(ready=False, started=False, state={"terminated": terminated})
    body["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
    body["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "lastTransitionTime": now, "reason": "PodCompleted"}
    ]
    return body
