"""Real-pods mode: the greeting Loop on the local cluster, as a user has it (kubelet, containerd).

Each bench gets a fresh namespace on the shared cluster and its own operator process watching
only that namespace. Runs go one after the other, so a step's overhead is not another run's
queueing. Step ends are when the pod watch first shows the pod terminated.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from e2e.bench.operator_only import free_port, scrape
from e2e.bench.probes import Probes, kloop_probes
from e2e.bench.procstat import Memory, cpu_seconds, memory
from e2e.bench.promtext import Tally, delta, kloop_requests
from e2e.bench.runs import RunWatch
from e2e.bench.timeline import PodTimeline
from e2e.cluster import local
from e2e.crds import install_crds
from e2e.loops import create_loop, greeting_loop, start_run
from e2e.operator_process import OperatorProcess

RUN_TIMEOUT = 120.0


@dataclass
class RealResult:
    runs: int
    finished: int
    probes: Probes  # steps from the first container seen terminated
    probes_phase: Probes  # steps from the phase seen Succeeded (what kloop waits for)
    kubelet_lag: list[float]  # first container seen terminated -> phase seen final
    cpu_seconds: float
    memory: Memory
    client: Tally
    cluster: str


def cluster_kubeconfig() -> Path:
    """KUBECONFIG when set, else the local harness cluster (returns at once when it is up)."""
    if os.environ.get("KUBECONFIG"):
        return Path(os.environ["KUBECONFIG"])
    return local.up()


def _wait_service_account(core: client.CoreV1Api, namespace: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", namespace, _preload_content=False)
            return
        except client.ApiException as err:
            if err.status != 404:
                raise
        time.sleep(0.1)
    raise RuntimeError(f"no default ServiceAccount in {namespace}")


def bench_real(runs: int, logs: Path) -> RealResult:
    kubeconfig = cluster_kubeconfig()
    api = config.new_client_from_config(config_file=str(kubeconfig))
    version = client.VersionApi(api).get_code().git_version
    install_crds(api)
    core = client.CoreV1Api(api)
    namespace = f"kloop-bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        _wait_service_account(core, namespace)
        create_loop(api, namespace, greeting_loop())
        timeline = PodTimeline(api, namespace, "kloop.dev/run").start()
        watch = RunWatch(api, namespace).start()
        port = free_port()
        operator = OperatorProcess(
            kubeconfig, logs / "operator-real.log", [namespace], ["--metrics-port", str(port)]
        )
        operator.start()
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            assert operator.proc is not None
            time.sleep(2.0)
            cpu0, client0 = cpu_seconds(operator.proc.pid), kloop_requests(scrape(url))
            for i in range(runs):
                name = f"bench-{i}"
                watch.created(name, time.monotonic())  # before the call, as for Argo
                start_run(api, namespace, "greeting", name)
                deadline = time.monotonic() + RUN_TIMEOUT
                while time.monotonic() < deadline:
                    with watch.lock:
                        if watch.runs[name].finished is not None:
                            break
                    time.sleep(0.1)
                else:
                    raise RuntimeError(f"run {name} not finished in {RUN_TIMEOUT:.0f}s")
                print(f"  real pods: run {i + 1}/{runs} finished", flush=True)
            time.sleep(1.0)
            cpu = cpu_seconds(operator.proc.pid) - cpu0
            mem = memory(operator.proc.pid)
            client_delta = delta(kloop_requests(scrape(url)), client0)
        finally:
            operator.stop()
            timeline.stop()
            watch.stop()
        with watch.lock:
            run_times = dict(watch.runs)
        finished = sum(1 for r in run_times.values() if r.finished is not None)
        pods = timeline.snapshot()
        probes = kloop_probes(pods, run_times)
        probes_phase = kloop_probes(pods, run_times, lambda p: p.finished)
        lag = [
            p.finished - p.main_terminated
            for p in pods
            if p.finished is not None and p.main_terminated is not None
        ]
    finally:
        core.delete_namespace(namespace, propagation_policy="Background")
    return RealResult(
        runs,
        finished,
        probes,
        probes_phase,
        lag,
        cpu,
        mem,
        client_delta,
        f"Kubernetes {version}",
    )
