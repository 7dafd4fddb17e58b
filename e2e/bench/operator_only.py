"""Operator-only mode: kloop against an apiserver whose only 'kubelet' is the bench driver.

The extra cluster ``bench`` (``e2e/cluster/extra.py``) is a kube-apiserver on the shared etcd
with no scheduler, kubelet or controller-manager: nothing but kloop and the bench touches it, so
its ``apiserver_request_total`` is kloop's traffic plus the bench's own (counted here and
subtracted). No controller-manager also means no namespace or garbage collection: every case
uses fresh namespaces and deletes what it created itself.
"""

from __future__ import annotations

import socket
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from e2e.bench.kubelet import FakeKubelet, register_node
from e2e.bench.probes import Probes, kloop_probes
from e2e.bench.procstat import Memory, cpu_seconds, memory
from e2e.bench.promtext import Tally, apiserver_requests, delta, kloop_requests
from e2e.bench.runs import RunWatch
from e2e.bench.timeline import PodTimeline
from e2e.bench.watch import counted_client
from e2e.cluster import extra
from e2e.crds import install_crds
from e2e.loops import GROUP, VERSION, greeting_loop
from e2e.operator_process import OperatorProcess

CLUSTER = "bench"
ITERATIONS_PER_RUN = 3
IDLE_SECONDS = 2.0  # after log-in, before the baseline: kopf's initial lists are not a run's cost


@dataclass
class CaseResult:
    """One case: ``runs`` LoopRuns created at once, one fresh operator process."""

    runs: int
    finished: int
    wall_seconds: float  # first create -> last run finished
    probes: Probes
    cpu_seconds: float  # operator utime + stime over the case
    memory: Memory
    client: Tally  # kloop_api_requests_total delta
    apiserver: Tally  # apiserver_request_total delta minus the bench's own requests
    makers: int  # maker pods created: iterations started (3 per finished greeting run)
    driver_errors: Counter[str] = field(default_factory=Counter)

    @property
    def iterations(self) -> int:
        """Iterations started: runs that did not finish in time still count what they did."""
        return self.makers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        return str(resp.read().decode())


def _apiserver_metrics(api: client.ApiClient) -> str:
    resp = api.rest_client.pool_manager.request("GET", f"{api.configuration.host}/metrics")
    return str(resp.data.decode())


class Bench:
    """The bench cluster, its node, the CRDs and the driver: set up once for all cases."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        cluster = extra.add_cluster(CLUSTER)
        self.kubeconfig = cluster.kubeconfig
        self.tally: Counter[tuple[str, str]] = Counter()  # every request the bench makes
        self.api = counted_client(str(self.kubeconfig), self.tally)
        self.admin = client.ApiClient(self.api.configuration)  # uncounted: /metrics scrapes
        install_crds(self.api)
        register_node(self.api)
        self.kubelet = FakeKubelet(self.api).start()
        self.prefix = f"bench-{uuid.uuid4().hex[:5]}"
        self.cases = 0

    def close(self) -> None:
        """Stop the driver and the bench apiserver (its objects stay in etcd, under its prefix)."""
        self.kubelet.stop()
        extra.remove_cluster(CLUSTER)

    def _namespace(self, name: str) -> None:
        core = client.CoreV1Api(self.api)
        core.create_namespace({"metadata": {"name": name}}, _preload_content=False)
        # no controller-manager: the ServiceAccount admission needs "default" to exist
        core.create_namespaced_service_account(
            name, {"metadata": {"name": "default"}}, _preload_content=False
        )

    def _cleanup(self, namespace: str) -> None:
        """No namespace controller here: delete what the case created, then the namespace."""
        custom = client.CustomObjectsApi(self.api)
        core = client.CoreV1Api(self.api)
        for plural in ("loopruns", "loops"):
            custom.delete_collection_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, _preload_content=False
            )
        for delete in (
            core.delete_collection_namespaced_pod,
            core.delete_collection_namespaced_config_map,
            core.delete_collection_namespaced_event,
        ):
            delete(namespace, grace_period_seconds=0, _preload_content=False)
        core.delete_namespace(namespace, _preload_content=False)

    def case(
        self,
        runs: int,
        timeout: float,
        launcher: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> CaseResult:
        """``runs`` greeting LoopRuns (one Loop each) created at once; wait for all."""
        self.cases += 1  # a fresh name each case: no namespace controller finishes a deletion here
        namespace = f"{self.prefix}-{self.cases}-{runs}"
        self._namespace(namespace)
        custom = client.CustomObjectsApi(self.api)
        for i in range(runs):
            loop = greeting_loop()
            loop["metadata"]["name"] = f"greeting-{i}"
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "loops", loop, _preload_content=False
            )
        timeline = PodTimeline(self.api, namespace, "kloop.dev/run").start()
        watch = RunWatch(self.api, namespace).start()
        port = free_port()
        operator = OperatorProcess(
            self.kubeconfig,
            self.logs / f"operator-{runs}.log",
            [namespace],
            ["--metrics-port", str(port)],
            env=env,
            launcher=launcher,
        )
        operator.start()
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        try:
            assert operator.proc is not None
            pid = operator.proc.pid
            time.sleep(IDLE_SECONDS)
            cpu0 = cpu_seconds(pid)
            client0 = kloop_requests(scrape(metrics_url))
            server0 = apiserver_requests(_apiserver_metrics(self.admin))
            bench0 = Counter(self.tally)
            began = time.monotonic()
            for i in range(runs):
                body = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "LoopRun",
                    "metadata": {"name": f"run-{i}"},
                    "spec": {"loopRef": {"name": f"greeting-{i}"}},
                }
                watch.created(f"run-{i}", time.monotonic())  # before the call, as for Argo
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "loopruns", body, _preload_content=False
                )
            deadline = began + timeout
            while watch.done() < runs and time.monotonic() < deadline:
                if operator.proc.poll() is not None:
                    raise RuntimeError(f"operator exited:\n{operator.log_tail()}")
                time.sleep(0.2)
            ended = time.monotonic()
            time.sleep(1.0)  # let the last status writes land before the counters are read
            cpu = cpu_seconds(pid) - cpu0
            mem = memory(pid)
            client_delta = delta(kloop_requests(scrape(metrics_url)), client0)
            server_delta = delta(apiserver_requests(_apiserver_metrics(self.admin)), server0)
            bench_delta = delta(Counter(self.tally), bench0)
        finally:
            operator.stop()
            timeline.stop()
            watch.stop()
        operator_at_server = Counter(
            {k: v - bench_delta.get(k, 0) for k, v in server_delta.items()}
        )
        with watch.lock:
            run_times = dict(watch.runs)
        finished = sum(1 for r in run_times.values() if r.finished is not None)
        pods = timeline.snapshot()
        probes = kloop_probes(
            pods,
            run_times,
            lambda p: self.kubelet.succeeded.get((p.namespace, p.name)),
        )
        self._cleanup(namespace)
        return CaseResult(
            runs,
            finished,
            ended - began,
            probes,
            cpu,
            mem,
            client_delta,
            Counter({k: v for k, v in operator_at_server.items() if v}),
            sum(1 for p in pods if p.labels.get("kloop.dev/role") == "maker"),
            Counter(self.kubelet.errors),
        )
