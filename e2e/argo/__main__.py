"""``python -m e2e.argo run --runs 3 --requeue 1``: the greeting loop on Argo, run after run.

Builds Argo (cached), starts workflow-controller in a fresh namespace, runs the workflows one
after another and prints, per run, create -> done, the phase, the pod count and the controller's
peak RSS and CPU seconds. Everything it created is removed at the end.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from dataclasses import dataclass

from kubernetes import client

from e2e.argo import procstat
from e2e.argo.controller import ArgoController
from e2e.argo.image import ensure_argoexec_image
from e2e.argo.workflow import greeting_workflow, pods_of, submit, wait_finished


@dataclass(frozen=True)
class RunResult:
    """One workflow run as the CLI reports it."""

    name: str
    seconds: float
    phase: str
    pods: int
    peak_rss_mib: float
    cpu_seconds: float

    def line(self) -> str:
        return (
            f"{self.name:24} {self.seconds:8.1f} {self.phase:10} {self.pods:5d} "
            f"{self.peak_rss_mib:10.1f} {self.cpu_seconds:9.2f}"
        )


def run_once(argo: ArgoController, api: client.ApiClient, name: str, timeout: float) -> RunResult:
    """Submit one greeting workflow and measure it until it has finished, exit handler included."""
    cpu_before = procstat.cpu_seconds(argo.pid)
    started = time.monotonic()
    submit(argo.namespace, greeting_workflow(name), api=api)
    wf = wait_finished(argo.namespace, name, timeout, api=api)
    seconds = time.monotonic() - started
    return RunResult(
        name=name,
        seconds=seconds,
        phase=str(wf["status"]["phase"]),
        pods=len(pods_of(argo.namespace, name, api=api)),
        peak_rss_mib=procstat.peak_rss_mib(argo.pid),
        cpu_seconds=procstat.cpu_seconds(argo.pid) - cpu_before,
    )


def _run(args: argparse.Namespace) -> int:
    namespace = args.namespace or f"argo-bench-{secrets.token_hex(3)}"
    requeue = "default (10s)" if args.requeue is None else f"{args.requeue:g}s"
    with ArgoController(namespace, args.requeue) as argo:
        print(f"namespace {namespace}, requeue {requeue}, controller pid {argo.pid}")
        print(f"{'run':24} {'create→done s':>8} {'phase':10} {'pods':>5} {'peakRSS MiB':>10} "
              f"{'CPU s':>9}")  # fmt: skip
        failed = 0
        for i in range(1, args.runs + 1):
            result = run_once(argo, argo.api, f"greeting-{i}", args.timeout)
            print(result.line(), flush=True)
            failed += result.phase != "Succeeded"
        print(f"controller log: {argo.log_path}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.argo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build workflow-controller, argoexec and the argoexec image")
    run = sub.add_parser("run", help="run the greeting workflow N times, one after another")
    run.add_argument("--runs", type=int, default=3, help="workflows to run (sequentially; ≤ 6)")
    run.add_argument(
        "--requeue", type=float, default=None,
        help="DEFAULT_REQUEUE_TIME in seconds (default: Argo's own, 10 s; floor 1 s)",
    )  # fmt: skip
    run.add_argument("--namespace", help="namespace to use (default: a fresh argo-bench-<hex>)")
    run.add_argument("--timeout", type=float, default=300, help="seconds per workflow")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(ensure_argoexec_image())
        return 0
    if not 1 <= args.runs <= 6:
        parser.error("--runs must be between 1 and 6 (the cluster is shared)")
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
