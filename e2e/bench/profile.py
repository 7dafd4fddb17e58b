"""Where the operator's time goes: pyinstrument over an operator-only case, summarized.

The operator runs under ``python -m pyinstrument`` (a sampling profiler of the main thread,
where kopf, the handlers, observe/decide/apply and JSON parsing run; API calls wait in worker
threads and are not on it). Samples are grouped by what they belong to, the event loop's idle
time left out, so the table reads as "of the operator's busy main-thread time, this share
went to ...".

``python -m e2e.bench.profile --operator-path DIR`` profiles another checkout's operator (e.g.
the commit before an optimisation) and writes the same table: that is how the "before" of
docs/BENCHMARKS.md was made.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.bench.operator_only import Bench, CaseResult

PROFILE_RUNS = 10
PROFILE_TIMEOUT = 300.0

GROUPS: tuple[tuple[str, str], ...] = (
    ("/kloop/core/", "kloop decision core (decide, history, memory rendering)"),
    ("/kloop/adapters/", "kloop I/O layer (observe, apply, store, REST calls)"),
    ("/kloop/", "kloop wiring (handlers, loops, metrics, logs)"),
    ("/kopf/", "kopf (watch streams, event processing)"),
    ("/kubernetes/", "kubernetes client (serialization, config)"),
    ("/urllib3/", "urllib3 (HTTP)"),
    ("/pydantic", "pydantic (validation, serialization)"),
    ("/json/", "json (parsing, encoding)"),
    ("/aiohttp/", "aiohttp (kopf's HTTP)"),
    ("/asyncio/", "asyncio (scheduling)"),
    ("/prometheus_client/", "prometheus_client"),
    ("/logging/", "logging"),
    ("/copy.py", "copy (deepcopy)"),
)
IDLE = ("selectors.py", "select", "epoll")
"""The event loop waiting for I/O: not busy."""


@dataclass
class ProfileSummary:
    label: str
    busy_seconds: float
    by_group: Counter[str]
    top: list[tuple[str, float]]  # the busiest functions by self time
    cost: CaseResult | None = None  # the same case without the profiler: CPU, requests, RSS


STARTUP = "start-up (imports)"
OTHER = "other (stdlib, ...)"


def _group(path: str) -> str:
    for marker, name in GROUPS:
        if marker in path:
            return name
    return OTHER


def summarize(session_path: Path, label: str) -> ProfileSummary:
    """Self time by group and the busiest functions, idle (waiting in select) excluded."""
    from pyinstrument.session import Session

    session = Session.load(str(session_path))
    root = session.root_frame()
    by_group: Counter[str] = Counter()
    by_function: Counter[str] = Counter()

    def walk(frame: Any, inherited: str) -> None:
        path = frame.file_path or ""
        name = frame.function or ""
        if "importlib" in path or name in ("_find_and_load", "_call_with_frames_removed"):
            group = STARTUP  # module imports and what they run, at start-up
        elif inherited == STARTUP or not path.startswith("/"):
            group = inherited  # built-ins count where they were called from
        else:
            group = _group(path)
        for child in frame.children:
            walk(child, group)
        own = frame.total_self_time  # its synthetic [self] children: time in this very frame
        if own <= 0 or name.startswith("[") or any(i in path or i in name for i in IDLE):
            return
        by_group[group] += own
        short = path.split("site-packages/")[-1].split("/operator/")[-1]
        by_function[f"{name} ({short}:{frame.line_no})"] += own

    if root is not None:
        walk(root, OTHER)
    top = [(name, float(seconds)) for name, seconds in by_function.most_common(8)]
    return ProfileSummary(label, sum(by_group.values()), by_group, top)


def profile_case(
    bench: Bench, runs: int, out: Path, label: str, operator_path: Path | None = None
) -> ProfileSummary:
    """The case once as is (its cost), then under pyinstrument (where the time goes)."""
    env = {"PYTHONPATH": f"{operator_path}:{os.environ.get('PYTHONPATH', '')}"}
    cost = bench.case(runs, PROFILE_TIMEOUT, env=env if operator_path else None)
    launcher = [
        sys.executable,
        "-m",
        "pyinstrument",
        "--renderer",
        "pyisession",
        "--outfile",
        str(out),
        "-m",
        "kloop.main",
    ]
    bench.case(runs, PROFILE_TIMEOUT, launcher=launcher, env=env if operator_path else None)
    summary = summarize(out, label)
    summary.cost = cost
    return summary


def _cost_rows(summaries: Sequence[ProfileSummary]) -> list[str]:
    def per_iteration(s: ProfileSummary, verbs: tuple[str, ...] | None) -> str:
        c = s.cost
        if c is None or not c.iterations:
            return "—"
        n = sum(v for (verb, _), v in c.apiserver.items() if verbs is None or verb in verbs)
        return f"{n / c.iterations:.1f}"

    def cell(s: ProfileSummary, pick: str) -> str:
        c = s.cost
        if c is None or not c.iterations:
            return "—"
        if pick == "cpu":
            return f"{c.cpu_seconds / c.iterations:.3f}"
        if pick == "rss":
            return f"{c.memory.peak_mib:.0f}"
        return f"{c.finished}/{c.runs} in {c.wall_seconds:.1f} s"

    return [
        "| the same case without the profiler | " + " | ".join("" for _ in summaries) + " |",
        "| runs finished, all done in | " + " | ".join(cell(s, "done") for s in summaries) + " |",
        "| operator CPU per iteration (s) | "
        + " | ".join(cell(s, "cpu") for s in summaries)
        + " |",
        "| API reads per iteration (at the apiserver) | "
        + " | ".join(per_iteration(s, ("get", "list")) for s in summaries)
        + " |",
        "| API writes per iteration (at the apiserver) | "
        + " | ".join(per_iteration(s, ("create", "update", "patch", "delete")) for s in summaries)
        + " |",
        "| operator peak RSS (MiB) | " + " | ".join(cell(s, "rss") for s in summaries) + " |",
    ]


def section(summaries: Sequence[ProfileSummary], runs: int) -> list[str]:
    """The profile table, one column per summary (e.g. before and after)."""
    groups = sorted(
        {g for s in summaries for g in s.by_group},
        key=lambda g: -max(s.by_group[g] for s in summaries),
    )
    head = " | ".join(f"{s.label}: s (share)" for s in summaries)
    lines = [
        f"### Profile: {runs} concurrent runs, operator only (pyinstrument, main thread)",
        "",
        "Self time of the operator's main thread by component, the event loop's idle wait left",
        "out (`e2e/bench/profile.py`). API calls run in worker threads and show only as the",
        "time the main thread spends handing them over.",
        "",
        f"| component | {head} |",
        "|---|" + "---:|" * len(summaries),
    ]
    for g in groups:
        cells = []
        for s in summaries:
            share = s.by_group[g] / s.busy_seconds if s.busy_seconds else 0.0
            cells.append(f"{s.by_group[g]:.2f} ({share:.0%})")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines.append(
        "| **busy main-thread time** | "
        + " | ".join(f"**{s.busy_seconds:.2f}**" for s in summaries)
        + " |"
    )
    lines += _cost_rows(summaries)
    lines.append("")
    for s in summaries:
        lines += [f"Busiest functions, {s.label} (self time, s):", ""]
        lines += [f"- {seconds:.2f} {name}" for name, seconds in s.top]
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench.profile", description=__doc__)
    parser.add_argument("--runs", type=int, default=PROFILE_RUNS)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--operator-path", type=Path, default=None, help="another operator/ dir")
    parser.add_argument("--output", type=Path, required=True, help="markdown table to write")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="kloop-profile-"))
    bench = Bench(logs)
    try:
        summary = profile_case(
            bench, args.runs, logs / "operator.pyisession", args.label, args.operator_path
        )
    finally:
        bench.close()
    args.output.write_text("\n".join(section([summary], args.runs)))
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
