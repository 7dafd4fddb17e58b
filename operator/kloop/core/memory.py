"""The loop's memory, as pure data: a JSON log of iterations and the markdown agents read.

The log keeps the latest ``keep`` entries in detail; older ones are folded into a summary (counts
and the last reasons that failed), and more are folded while the rendered ConfigMap would exceed
``max_bytes``. The markdown has three sections (Done / Next / Tried and failed) so a cold-started
agent sees at a glance what worked, what to do next and what not to try again.
"""

from __future__ import annotations

import json
from typing import Any

from kloop.api.looprun import IterationRecord

MEMORY_KEY = "memory.md"
LOG_KEY = "log.json"
SUMMARY_REASONS_KEPT = 10


def memory_entry(run: str, run_uid: str, record: IterationRecord) -> dict[str, Any]:
    """One finished iteration as the memory log stores it (keyed by the run's uid)."""
    maker = record.maker
    return {
        "run": run,
        "runUid": run_uid,
        "iteration": record.number,
        "stage": record.stage,
        "cluster": record.cluster,
        "maker": {
            "outcome": maker.outcome if maker else None,
            "summary": maker.summary if maker else "",
        },
        "verdicts": [
            {"checker": c.name, "verdict": c.verdict, "reasons": c.reasons} for c in record.checkers
        ],
        "decision": record.decision,
        "why": record.why,
        "at": record.finished_at,
    }


def empty_log() -> dict[str, Any]:
    """A memory log with nothing in it."""
    log: dict[str, Any] = {
        "summary": {"compacted": 0, "passed": 0, "failed": 0, "lastFailures": []},
        "entries": [],
        "appended": {},
    }
    return log


RUNS_TRACKED = 50


def appended_through(log: dict[str, Any], run_uid: str) -> int:
    """The last iteration of a run in the log (appended in order, even if since compacted).

    Keyed by uid: a new run that reuses a deleted run's name starts from nothing.
    """
    last: int = log.get("appended", {}).get(run_uid, 0)
    return last


def has_entry(log: dict[str, Any], run_uid: str, iteration: int) -> bool:
    """Whether the log already holds this iteration (appends are idempotent)."""
    return iteration <= appended_through(log, run_uid)


def _fold(summary: dict[str, Any], entry: dict[str, Any]) -> None:
    summary["compacted"] += 1
    passed = entry["verdicts"] and all(v["verdict"] == "pass" for v in entry["verdicts"])
    summary["passed" if passed else "failed"] += 1
    if not passed:
        reasons = [r for v in entry["verdicts"] if v["verdict"] != "pass" for r in v["reasons"]]
        line = f"{entry['run']}#{entry['iteration']}: {entry['maker']['summary']}"
        if reasons:
            line += f" — {'; '.join(reasons)}"
        summary["lastFailures"] = (summary["lastFailures"] + [line[:300]])[-SUMMARY_REASONS_KEPT:]


def append_entry(
    log: dict[str, Any], entry: dict[str, Any], keep: int, max_bytes: int, loop: str, goal: str
) -> dict[str, Any]:
    """A new log with ``entry`` appended and old entries compacted to fit ``keep``/``max_bytes``."""
    result: dict[str, Any] = json.loads(json.dumps(log))
    if has_entry(result, entry["runUid"], entry["iteration"]):
        return result
    result["entries"].append(entry)
    appended = result.setdefault("appended", {})
    appended.pop(entry["runUid"], None)
    appended[entry["runUid"]] = entry["iteration"]
    while len(appended) > RUNS_TRACKED:
        appended.pop(next(iter(appended)))
    while len(result["entries"]) > keep:
        _fold(result["summary"], result["entries"].pop(0))
    while len(result["entries"]) > 1 and rendered_size(result, loop, goal) > max_bytes:
        _fold(result["summary"], result["entries"].pop(0))
    failures = result["summary"]["lastFailures"]
    while failures and rendered_size(result, loop, goal) > max_bytes:
        failures.pop(0)
    return result


def rendered_size(log: dict[str, Any], loop: str, goal: str) -> int:
    """Bytes the ConfigMap data would take."""
    return len(json.dumps(log).encode()) + len(render_markdown(log, loop, goal).encode())


def _line(entry: dict[str, Any]) -> str:
    summary = entry["maker"]["summary"] or "(no summary)"
    return f"{entry['run']} iteration {entry['iteration']}: {summary}"


def render_markdown(log: dict[str, Any], loop: str, goal: str) -> str:
    """The memory file agents read at /kloop/memory/memory.md."""
    entries = log["entries"]
    done = [
        e for e in entries if e["verdicts"] and all(v["verdict"] == "pass" for v in e["verdicts"])
    ]
    failed = [e for e in entries if e not in done]
    lines = [f"# Memory of loop {loop}", "", f"Goal: {goal}", "", "## Done"]
    lines += [f"- {_line(e)} (all checks passed)" for e in done] or ["- nothing yet"]
    lines += ["", "## Next"]
    if entries and entries[-1] in failed:
        last = entries[-1]
        todo = [
            f"- {v['checker']}: {r}"
            for v in last["verdicts"]
            if v["verdict"] != "pass"
            for r in (v["reasons"] or ["failed without a reason"])
        ]
        lines += todo or [f"- {last['why'] or 'retry'}"]
    elif entries:
        lines += ["- the last iteration passed every check"]
    else:
        lines += ["- start on the goal"]
    lines += ["", "## Tried and failed"]
    tried = []
    for e in failed:
        reasons = [r for v in e["verdicts"] if v["verdict"] != "pass" for r in v["reasons"]]
        tried.append(f"- {_line(e)} — {'; '.join(reasons) or e['why'] or 'failed'}")
    lines += tried or ["- none"]
    summary = log["summary"]
    if summary["compacted"]:
        lines += [
            "",
            "## Earlier (compacted)",
            f"- {summary['compacted']} older iterations: {summary['passed']} passed, "
            f"{summary['failed']} failed",
        ]
        lines += [f"- {line}" for line in summary["lastFailures"]]
    return "\n".join(lines) + "\n"
