"""The loop's memory, as pure data: a JSON log of iterations and the markdown agents read.

The log keeps the latest ``keep`` entries in detail; older ones are folded into a summary (counts
and the last reasons that failed), and more are folded while the ConfigMap data would exceed
``max_bytes``. ``render_data`` is the one function that produces the ConfigMap's data: compaction
measures exactly what the adapter writes. The markdown has three sections (Done / Next / Tried and
failed) so a cold-started agent sees at a glance what worked, what to do next and what not to try
again.

Which iterations of a run are in memory is a fact on the LoopRun (``memoryRecordedThrough``),
checked against the log's ``appended`` registry of recent runs (``recorded_through``).
"""

from __future__ import annotations

import json
from typing import Any

from kloop.api.looprun import IterationRecord

MEMORY_KEY = "memory.md"
LOG_KEY = "log.json"
SUMMARY_REASONS_KEPT = 10
GOAL_BYTES = 1024
"""The goal as the markdown repeats it (agents get all of it in KLOOP_GOAL)."""
SHRUNK_CHARS = 256
"""Summary, why and each reason of an entry too big to fit ``max_bytes`` on its own."""


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


def recorded_through(status_value: int | None, log: dict[str, Any], run_uid: str) -> int:
    """The last iteration of a run known to be in memory, by its status or by the log's registry.

    The run's status holds for runs the registry has since forgotten; the registry covers a crash
    between the append and the status patch.
    """
    return max(status_value or 0, appended_through(log, run_uid))


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


def _shrink(entry: dict[str, Any]) -> None:
    """Cut an entry's texts (an entry alone bigger than ``max_bytes``)."""
    entry["maker"]["summary"] = (entry["maker"]["summary"] or "")[:SHRUNK_CHARS]
    entry["why"] = (entry["why"] or "")[:SHRUNK_CHARS]
    for verdict in entry["verdicts"]:
        verdict["reasons"] = [r[:SHRUNK_CHARS] for r in verdict["reasons"][:2]]
    entry["shrunk"] = True


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
    _compact(result, entry["runUid"], max_bytes, loop, goal)
    return result


def _compact(log: dict[str, Any], run_uid: str, max_bytes: int, loop: str, goal: str) -> None:
    """Fold, then shorten, until the data fits ``max_bytes``; never fails for size.

    In order: fold the oldest entries (keeping the newest), drop the oldest compacted failure
    lines, shorten the newest entry, fold it too, and at last forget the oldest runs of the
    registry (never ``run_uid``). What remains (counts, one registry entry, the markdown skeleton
    with the goal cut to ``GOAL_BYTES``) fits the smallest ``maxBytes`` the API allows.
    """

    def over() -> bool:
        return rendered_size(log, loop, goal) > max_bytes

    if not over():
        return  # the usual case: one rendering, not one per step below
    entries, failures = log["entries"], log["summary"]["lastFailures"]
    while len(entries) > 1 and over():
        _fold(log["summary"], entries.pop(0))
    while failures and over():
        failures.pop(0)
    if entries and over():
        _shrink(entries[-1])
    if entries and over():
        _fold(log["summary"], entries.pop(0))
    while failures and over():
        failures.pop(0)
    appended = log["appended"]
    while len(appended) > 1 and over():
        oldest = next(k for k in appended if k != run_uid)
        appended.pop(oldest)


def render_data(log: dict[str, Any], loop: str, goal: str) -> dict[str, str]:
    """The memory ConfigMap's ``data``, exactly as the adapter writes it."""
    return {
        LOG_KEY: json.dumps(log, indent=1),
        MEMORY_KEY: render_markdown(log, loop, goal),
    }


def data_size(data: dict[str, str]) -> int:
    """Bytes of ConfigMap data (keys and values, UTF-8), as the apiserver counts them."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in data.items())


def rendered_size(log: dict[str, Any], loop: str, goal: str) -> int:
    """Bytes the ConfigMap data takes once written."""
    return data_size(render_data(log, loop, goal))


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
    shown = goal.encode()[:GOAL_BYTES].decode(errors="ignore")
    if shown != goal:
        shown += " … (shortened; agents get the whole goal in KLOOP_GOAL)"
    lines = [f"# Memory of loop {loop}", "", f"Goal: {shown}", "", "## Done"]
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
