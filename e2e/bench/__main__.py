"""``python -m e2e.bench``: run the benchmarks, write docs/BENCHMARKS.md and print it."""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

from e2e.bench import decide, report
from e2e.bench.argo_side import bench_argo
from e2e.bench.machine import OUTPUT, environment
from e2e.bench.operator_only import Bench, CaseResult
from e2e.bench.profile import PROFILE_RUNS, ProfileSummary, profile_case
from e2e.bench.profile import section as profile_section
from e2e.bench.real_pods import bench_real, cluster_kubeconfig

CASES = (1, 10, 100)
QUICK_CASES = (1, 5)
SCALE_CASE = 1000
REAL_RUNS = 3
ARGO_REQUEUES: tuple[float | None, ...] = (None, 1.0)
"""Argo's default requeue (10 s) and the 1 s floor its source names."""
CASE_TIMEOUT = 300.0  # seconds for one operator-only case to finish all its runs
SCALE_TIMEOUT = 900.0
SCALE_OUTPUT = OUTPUT.with_name("BENCHMARKS-scale.md")


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def operator_only(
    counts: tuple[int, ...], timeout: float, logs: Path, profile: bool = False
) -> tuple[list[CaseResult], ProfileSummary | None]:
    bench = Bench(logs)
    results = []
    summary = None
    try:
        for n in counts:
            _say(f"operator only: {n} concurrent run(s)")
            result = bench.case(n, timeout)
            _say(
                f"  {result.finished}/{n} finished in {result.wall_seconds:.1f}s, "
                f"CPU {result.cpu_seconds:.2f}s, peak RSS {result.memory.peak_mib:.0f} MiB"
            )
            results.append(result)
        if profile:
            _say(f"operator only: profile, {PROFILE_RUNS} concurrent runs under pyinstrument")
            summary = profile_case(bench, PROFILE_RUNS, logs / "operator.pyisession", "after")
    finally:
        bench.close()
    return results, summary


def _profile_section(after: ProfileSummary | None) -> list[str]:
    """The profile of the code under test beside the one recorded before the optimisations."""
    before = Path(__file__).resolve().parents[2] / "docs" / "bench-profile-before.md"
    lines = ["## 6. Profiles: before and after", ""]
    if before.exists():
        lines += [
            f"Before: recorded once from commit c00b32d ([{before.name}]({before.name}), "
            "`python -m e2e.bench.profile --operator-path <that checkout>/operator`).",
            "",
            *before.read_text().splitlines(),
            "",
        ]
    if after is not None:
        lines += ["After: this commit.", "", *profile_section([after], PROFILE_RUNS)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced run for development")
    parser.add_argument(
        "--scale",
        action="store_true",
        help=f"only {SCALE_CASE} concurrent runs (operator only) -> {SCALE_OUTPUT.name}",
    )
    parser.add_argument("--no-cluster", action="store_true", help="only the decision core")
    parser.add_argument(
        "--no-argo", action="store_true", help="skip the Argo Workflows reference (real pods)"
    )
    parser.add_argument(
        "--cases",
        default="",
        help="operator-only concurrency levels to run instead, e.g. 100 or 1,10 (development)",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    env = environment()
    logs = Path(tempfile.mkdtemp(prefix="kloop-bench-"))
    _say(f"operator logs in {logs}")
    sections: list[list[str]] = []
    targets: list[str] | None = None
    if args.scale:
        output = args.output or SCALE_OUTPUT
        cases, _ = operator_only((SCALE_CASE,), SCALE_TIMEOUT, logs)
        targets = report.targets_section(cases, None)
        sections.append(report.operator_only_section(cases))
    else:
        output = args.output or OUTPUT
        _say("decision core: timing")
        gc.collect()
        sections.append(decide.section(decide.cases()))
        if args.no_cluster:
            sections.append(
                ["## 2. Operator only and real pods", "", "Skipped (`--no-cluster`).", ""]
            )
        else:
            counts: tuple[int, ...] = QUICK_CASES if args.quick else CASES
            if args.cases:
                counts = tuple(int(c) for c in args.cases.split(","))
            cases, profiled = operator_only(counts, CASE_TIMEOUT, logs, profile=not args.quick)
            sections.append(report.operator_only_section(cases))
            targets_cases = cases
            runs = 1 if args.quick else REAL_RUNS
            _say(f"real pods: {runs} greeting run(s) on the local cluster")
            real = bench_real(runs, logs)
            sections.append(report.real_pods_section(real))
            targets = report.targets_section(targets_cases, real)
            sections.append(
                [
                    "## 4. 1,000 concurrent runs",
                    "",
                    f"`make bench-scale` (operator only) writes [{SCALE_OUTPUT.name}]"
                    f"({SCALE_OUTPUT.name}).",
                    "",
                ]
            )
            if not args.no_argo:
                argos = []
                for requeue in ARGO_REQUEUES:
                    _say(f"Argo Workflows (requeue {requeue or 'default'}): {runs} workflow(s)")
                    argos.append(bench_argo(cluster_kubeconfig(), runs, requeue, logs))
                sections.append(report.argo_section(real, argos))
                targets = report.targets_section(targets_cases, real, argos)
            sections.append(_profile_section(profiled))
    if targets is not None:
        sections.insert(0, targets)
    lines = report.header(env)
    for section in sections:
        lines += section
    text = "\n".join(lines).rstrip() + "\n"
    output.write_text(text)
    print(f"\nwrote {output}\n", flush=True)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
