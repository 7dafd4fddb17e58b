"""``make demo``: a real cluster, the CRDs, the operator, and a Loop that passes on iteration 3.

Uses the cluster in KUBECONFIG when set, else brings up the local one (building it if needed).
The operator runs as a local process (its log path is printed); the sample Loop's maker fixes a
greeting one mistake per iteration, guided by the checker's feedback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client, config

from e2e.cluster import local
from e2e.cluster.paths import STATE_ROOT, kubectl
from e2e.crds import install_crds
from e2e.loops import create_loop, events_for, greeting_loop, memory, start_run, wait_finished
from e2e.operator_process import OperatorProcess

NAMESPACE = "kloop-demo"


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def demo_kubeconfig() -> Path:
    """The user's cluster when KUBECONFIG is set, else the local harness cluster (started)."""
    if os.environ.get("KUBECONFIG"):
        return Path(os.environ["KUBECONFIG"])
    return local.up()


def fresh_namespace(api: client.ApiClient, namespace: str = NAMESPACE) -> None:
    """Delete the previous demo's namespace (and wait until it is gone), then create it."""
    core = client.CoreV1Api(api)
    try:
        core.delete_namespace(namespace)
        say(f"removing the previous demo namespace {namespace}")
        while True:
            core.read_namespace(namespace)
            time.sleep(0.5)
    except client.ApiException as err:
        if err.status != 404:
            raise
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))


def show(kubeconfig: Path, *args: str) -> None:
    binary = kubectl() if kubectl().exists() else "kubectl"
    print(f"$ kubectl {' '.join(args)}", flush=True)
    subprocess.run([str(binary), "--kubeconfig", str(kubeconfig), *args], check=False)


def main() -> int:
    say("cluster")
    kubeconfig = demo_kubeconfig()
    print(f"KUBECONFIG={kubeconfig}")
    api = config.new_client_from_config(config_file=str(kubeconfig))
    say("installing the CRDs from crds/")
    print("\n".join(install_crds(api)))
    fresh_namespace(api)
    log_dir = STATE_ROOT if STATE_ROOT.exists() else Path("/tmp")
    operator = OperatorProcess(kubeconfig, log_dir / "kloop-demo-operator.log", [NAMESPACE])
    say(f"starting the operator (log: {operator.log_path})")
    operator.start()
    try:
        say(f"applying Loop 'greeting' and LoopRun 'greeting-1' in namespace {NAMESPACE}")
        create_loop(api, NAMESPACE, greeting_loop())
        start_run(api, NAMESPACE, "greeting", "greeting-1")
        say("progress")
        run = wait_finished(api, NAMESPACE, "greeting-1", timeout=300, show=True)
    finally:
        operator.stop()
    status = run["status"]
    say("iterations (LoopRun status)")
    for record in status["iterations"]:
        verdicts = "; ".join(
            f"{c['name']}={c['verdict']} ({', '.join(c['reasons'])})" for c in record["checkers"]
        )
        print(f"  #{record['number']} maker: {record['maker']['summary']}")
        print(f"      checkers: {verdicts}")
        print(f"      decision: {record['decision']} — {record['why']}")
    say("kubectl get")
    show(kubeconfig, "get", "-n", NAMESPACE, "loops,loopruns")
    say("events")
    found = events_for(api, NAMESPACE, "greeting-1")
    for event in sorted(found, key=lambda e: int(e.metadata.resource_version)):
        print(f"  {event.type:8} {event.reason:14} {event.message}")
    say("memory (ConfigMap greeting-memory, key memory.md)")
    markdown, _ = memory(api, NAMESPACE, "greeting")
    print(markdown)
    ok = status["phase"] == "Succeeded"
    say(f"run {status['phase']} after {status['iteration']} iteration(s)" + ("" if ok else " (!)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
