"""``make bench``: time the decision core and a real LoopRun; write docs/BENCHMARKS.md.

Speed targets live here, never in timed unit tests: a timing assertion in the suite fails on a
busy machine and says nothing about the code. Every figure is several runs reported as
min/median/max, next to the machine, commit and date it was taken on, so numbers from different
runs can be compared honestly. Run from the repository root (``tests`` must be importable).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kubernetes import client, config
from tests.unit.builders import (
    Simulation,
    checker_pod,
    container,
    loop_spec,
    maker_ok,
    maker_pod,
    observe,
    verdict,
)

from e2e.cluster import local
from e2e.crds import install_crds
from e2e.loops import (
    GROUP,
    VERSION,
    create_loop,
    finished,
    get_run,
    greeting_loop,
    run_pods,
    start_run,
)
from e2e.operator_process import OperatorProcess
from kloop.api.loop import LoopSpec
from kloop.core.decide import decide
from kloop.core.history import STATUS_ITERATIONS_MAX as MAX_ITERATION_RECORDS
from kloop.core.model import ObservedRun

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "BENCHMARKS.md"
DECIDE_REPEATS = 7  # timeit batches per case; each batch runs >= 0.2 s (timeit.autorange)
E2E_RUNS = 3
E2E_MAX_RUNS = 5
RUN_TIMEOUT = 90.0  # one greeting run takes ~15 s on 2 cores; a hung run must not hang make
E2E_BUDGET = 240.0  # no new run starts after this many seconds of the e2e part
POLL_EVERY = 0.1  # status polling resolution of the e2e timings
GREETING_ITERATIONS = 3
GREETING_PODS = 2 * GREETING_ITERATIONS + 1  # maker + checker per iteration, plus teardown
WIDE_CHECKERS = 8


@dataclass(frozen=True)
class Stats:
    """min/median/max of repeated samples (never a single sample)."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if len(samples) < 2:
            raise ValueError("a benchmark needs repeated samples")
        return cls(min(samples), statistics.median(samples), max(samples))

    def row(self, label: str, fmt: str, scale: float = 1.0) -> str:
        cells = (format(v * scale, fmt) for v in (self.low, self.median, self.high))
        return f"| {label} | " + " | ".join(cells) + " |"


# --- the machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def _commit() -> str:
    """Short HEAD, "+dirty" when the tree differs (the output file itself does not count)."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", ".", f":!{OUTPUT.relative_to(ROOT)}")
    return head + ("+dirty" if dirty else "")


def _command() -> str:
    argv = " ".join(sys.argv[1:])
    if os.environ.get("MAKELEVEL"):
        return "make bench" + (f" ({argv})" if argv else "")
    return f"python -m e2e.bench {argv}".strip()


def environment() -> list[tuple[str, str]]:
    """Where and when the numbers were taken: without this they cannot be compared."""
    return [
        ("date (UTC)", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")),
        ("command", f"`{_command()}`"),
        ("commit", f"`{_commit()}`"),
        ("CPU", _cpu_model()),
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("memory", f"{_memory_gib():.1f} GiB"),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
    ]


# --- 1. the pure decision core -----------------------------------------------------------------


def fresh_run() -> ObservedRun:
    """A LoopRun just created: decide starts iteration 1 and asks for the maker pod."""
    return observe(spec=loop_spec())


def wide_spec() -> LoopSpec:
    checkers = [
        {"name": f"c{i}", "template": {"spec": {"containers": [container("check:1", "c")]}}}
        for i in range(WIDE_CHECKERS)
    ]
    return loop_spec(
        checkers=checkers,
        budget={"maxIterations": 1000},
        statusIterations=MAX_ITERATION_RECORDS,
    )


def long_run() -> ObservedRun:
    """Iteration 50 of a run with 8 checkers, waiting on its checker pods.

    status.iterations holds MAX_ITERATION_RECORDS records (its bound) and the pods of every
    iteration are observed, as the operator lists them by label: the largest steady-state input.
    Built by driving decide() like the operator does, so the state is one decide really produces.
    """
    spec = wide_spec()
    sim = Simulation(spec)
    sim.step()
    for i in range(1, MAX_ITERATION_RECORDS + 1):
        sim.finish(maker_pod(i), maker_ok(tokens=10, summary=f"attempt {i}"))
        if i == MAX_ITERATION_RECORDS:
            break
        for checker in spec.checkers:
            sim.finish(checker_pod(i, checker.name), verdict("fail", f"{checker.name} not yet"))
    assert len(sim.status.iterations) == MAX_ITERATION_RECORDS
    return observe(
        sim.status,
        spec,
        dict(sim.pods),
        sim.now + timedelta(seconds=1),
        memory=frozenset(sim.memory),
    )


@dataclass(frozen=True)
class DecideResult:
    label: str
    records: int
    pods: int
    actions: int
    per_call: Stats  # seconds


def bench_decide(label: str, obs: ObservedRun) -> DecideResult:
    """Time decide(obs) in timeit batches (gc off, as timeit does); per-call seconds."""
    first = decide(obs)  # warm-up, and what the call decides
    timer = timeit.Timer(lambda: decide(obs))
    number, _ = timer.autorange()
    batches = timer.repeat(repeat=DECIDE_REPEATS, number=number)
    per_call = Stats.of([t / number for t in batches])
    return DecideResult(
        label, len(obs.status.iterations), len(obs.pods), len(first.actions), per_call
    )


def decide_section(results: list[DecideResult]) -> list[str]:
    lines = [
        "## 1. Decision core: `kloop.core.decide.decide`",
        "",
        "Pure function, no I/O: one observed LoopRun in, the next status and actions out. It runs",
        "on every reconcile (each pod or LoopRun event and each resync), so its cost bounds how",
        "many runs one operator can drive. Inputs are built as in `tests/unit/builders.py`.",
        f"{DECIDE_REPEATS} batches per case (timeit: gc off, each batch >= 0.2 s); per-call",
        "time is batch time / calls in the batch.",
        "",
    ]
    for r in results:
        lines += [
            f"### {r.label}",
            "",
            f"Input: {r.records} iteration record(s), {r.pods} observed pod(s); "
            f"decide returns {r.actions} action(s).",
            "",
            "| metric | min | median | max |",
            "|---|---:|---:|---:|",
            r.per_call.row("µs per call", ".1f", 1e6),
            Stats(1 / r.per_call.high, 1 / r.per_call.median, 1 / r.per_call.low).row(
                "calls per second", ",.0f"
            ),
            "",
        ]
    return lines


# --- 2. end to end on the real cluster ---------------------------------------------------------


@dataclass(frozen=True)
class RunTiming:
    total: float  # LoopRun created -> Succeeded and teardown done
    pickup: float  # LoopRun created -> iteration 1 started (status written by the operator)
    iterations: float  # iteration 1 started -> phase Succeeded
    teardown: float  # phase Succeeded -> teardown done
    peak_rss_mib: float


def cluster_kubeconfig() -> Path:
    """KUBECONFIG when set, else the local harness cluster (returns at once when it is up)."""
    if os.environ.get("KUBECONFIG"):
        return Path(os.environ["KUBECONFIG"])
    return local.up()


def _wait(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_EVERY)


def _has_default_sa(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account("default", namespace)
    except client.ApiException as err:
        if err.status != 404:
            raise
        return False
    return True


def _peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def _delete_run(api: client.ApiClient, namespace: str, name: str, timeout: float = 30) -> None:
    """Delete the LoopRun and wait until it is gone (LoopRuns carry no finalizer)."""
    custom = client.CustomObjectsApi(api)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "loopruns", name)

    def gone() -> bool:
        try:
            get_run(api, namespace, name)
        except client.ApiException as err:
            if err.status == 404:
                return True
            raise
        return False

    _wait(f"LoopRun {namespace}/{name} to be released", gone, timeout)


def one_run(api: client.ApiClient, kubeconfig: Path, namespace: str, log: Path) -> RunTiming:
    """A fresh operator process and the greeting loop in ``namespace``, timed by polling status."""
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    # pods cannot be created before the namespace's ServiceAccount exists; not the operator's time
    _wait(f"ServiceAccount default in {namespace}", lambda: _has_default_sa(core, namespace), 30)
    create_loop(api, namespace, greeting_loop())
    operator = OperatorProcess(kubeconfig, log, [namespace])
    operator.start()
    try:
        _wait(
            "the operator to log in",
            lambda: "Initial authentication has finished" in operator.log_tail(200),
            30,
        )
        start = time.monotonic()
        start_run(api, namespace, "greeting", "bench")
        picked = succeeded = None
        while True:
            now = time.monotonic()
            if now - start > RUN_TIMEOUT:
                raise RuntimeError(
                    f"run not finished in {RUN_TIMEOUT:.0f}s:\n{operator.log_tail()}"
                )
            run = get_run(api, namespace, "bench")
            status = run.get("status") or {}
            if picked is None and status.get("iteration", 0) >= 1:
                picked = now
            if succeeded is None and status.get("phase") in ("Succeeded", "Failed", "Halted"):
                succeeded = now
            if finished(run):
                break
            time.sleep(POLL_EVERY)
        pods = len(run_pods(api, namespace, "bench"))
        _delete_run(api, namespace, "bench")
        assert operator.proc is not None
        rss = _peak_rss_mib(operator.proc.pid)
    finally:
        operator.stop()
    if status.get("phase") != "Succeeded" or status.get("iteration") != GREETING_ITERATIONS:
        raise RuntimeError(f"unexpected result: {status.get('phase')} {status.get('message')}")
    if pods != GREETING_PODS:
        raise RuntimeError(f"expected {GREETING_PODS} pods, found {pods}")
    assert picked is not None and succeeded is not None
    return RunTiming(now - start, picked - start, succeeded - picked, now - succeeded, rss)


def bench_e2e(runs: int) -> tuple[list[RunTiming], str]:
    """``runs`` greeting runs, each in its own namespace with its own operator process."""
    kubeconfig = cluster_kubeconfig()
    api = config.new_client_from_config(config_file=str(kubeconfig))
    version = client.VersionApi(api).get_code()
    install_crds(api)
    logs = Path(tempfile.mkdtemp(prefix="kloop-bench-"))
    print(f"e2e: {runs} run(s) on {kubeconfig}; operator logs in {logs}", flush=True)
    prefix = f"kloop-bench-{uuid.uuid4().hex[:6]}"
    created: list[str] = []
    timings: list[RunTiming] = []
    began = time.monotonic()
    try:
        for i in range(runs):
            if time.monotonic() - began > E2E_BUDGET:
                raise RuntimeError(f"e2e budget of {E2E_BUDGET:.0f}s spent after {i} run(s)")
            namespace = f"{prefix}-{i}"
            created.append(namespace)
            t = one_run(api, kubeconfig, namespace, logs / f"operator-{i}.log")
            print(f"  run {i + 1}: {t.total:.1f}s total, {t.peak_rss_mib:.0f} MiB", flush=True)
            timings.append(t)
    finally:
        core = client.CoreV1Api(api)
        for namespace in created:
            try:
                core.delete_namespace(namespace, propagation_policy="Background")
            except client.ApiException as err:
                if err.status != 404:
                    raise
    return timings, f"Kubernetes {version.git_version}"


def e2e_section(timings: list[RunTiming], cluster: str) -> list[str]:
    def stats(pick: Callable[[RunTiming], float]) -> Stats:
        return Stats.of([pick(t) for t in timings])

    per_iteration = stats(lambda t: t.iterations / GREETING_ITERATIONS)
    return [
        "## 2. End to end: one greeting LoopRun on the real cluster",
        "",
        "What a user waits for: the operator as a process (`python -m kloop.main -n NS`, fresh",
        "per run, in a fresh namespace) drives `e2e/manifests/greeting-loop.yaml` to Succeeded:",
        f"{GREETING_ITERATIONS} iterations = {GREETING_ITERATIONS} maker + "
        f"{GREETING_ITERATIONS} checker pods, then the teardown pod.",
        f"Cluster: {cluster}, one node, shared with other users. {len(timings)} runs; times come",
        f"from polling the LoopRun every {POLL_EVERY:g} s from its creation (the operator has",
        "already logged in); seconds per iteration = (iteration 1 started → Succeeded) / "
        f"{GREETING_ITERATIONS}.",
        "Peak RSS is the operator's VmHWM just before it is stopped.",
        "",
        "| metric | min | median | max |",
        "|---|---:|---:|---:|",
        stats(lambda t: t.total).row("total wall time to Succeeded + teardown (s)", ".1f"),
        stats(lambda t: t.pickup).row("pickup: created → iteration 1 started (s)", ".2f"),
        per_iteration.row("seconds per iteration (maker + checker pod)", ".2f"),
        stats(lambda t: t.teardown).row("teardown after Succeeded (s)", ".2f"),
        stats(lambda t: t.peak_rss_mib).row("operator peak RSS (MiB)", ".0f"),
        "",
    ]


# --- the report --------------------------------------------------------------------------------


def report(env: list[tuple[str, str]], sections: list[list[str]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`e2e/bench.py`); do not edit by hand. Speed targets are",
        "checked here, never in timed unit tests. Every figure is min/median/max over repeated",
        "runs on the machine below; compare numbers only across the same machine.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in env),
        "",
    ]
    for section in sections:
        lines += section
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, write docs/BENCHMARKS.md and print it."""
    parser = argparse.ArgumentParser(prog="python -m e2e.bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=E2E_RUNS, help="end-to-end runs (2..5)")
    parser.add_argument("--no-cluster", action="store_true", help="only the decision core")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if not 2 <= args.runs <= E2E_MAX_RUNS:
        parser.error(f"--runs must be between 2 and {E2E_MAX_RUNS}")
    env = environment()
    print("decide: timing…", flush=True)
    cases = [
        ("(a) fresh run", fresh_run()),
        (
            f"(b) {MAX_ITERATION_RECORDS} recorded iterations, {WIDE_CHECKERS} checkers, "
            "waiting on pods",
            long_run(),
        ),
    ]
    gc.collect()
    sections = [decide_section([bench_decide(label, obs) for label, obs in cases])]
    if not args.no_cluster:
        timings, cluster = bench_e2e(args.runs)
        sections.append(e2e_section(timings, cluster))
    else:
        sections.append(["## 2. End to end", "", "Skipped (`--no-cluster`).", ""])
    text = report(env, sections)
    args.output.write_text(text)
    print(f"\nwrote {args.output}\n", flush=True)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
