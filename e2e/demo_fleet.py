"""``make demo-fleet``: docs/examples/multi-cluster-loop.yaml as is, on the local fleet.

Brings up the local cluster and three extra clusters (fleet-a: tier canary; fleet-b, fleet-c:
tier prod), registers them as cluster Secrets, grants the agent ServiceAccount what the example
needs in each, runs the operator and a LoopRun, prints progress per stage and cluster, approves
the prod stage when it asks, and shows what ended up in each cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from e2e.cluster import local
from e2e.cluster.paths import STATE_ROOT, kubectl
from e2e.crds import install_crds
from e2e.demo import fresh_namespace, say, show
from e2e.fleet import FLEET, add_target_cluster, grant_agent, registered, target_client
from e2e.loops import GROUP, VERSION, finished, get_run
from e2e.operator_process import OperatorProcess

NAMESPACE = "kloop-fleet-demo"
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "multi-cluster-loop.yaml"
TIERS = {"fleet-a": "canary", "fleet-b": "prod", "fleet-c": "prod"}
AGENTS, AGENT, WORK = "kloop-agents", "agent", "fleet-demo"
RUN = "greeting-rollout-1"


def progress(run: dict[str, Any]) -> list[str]:
    """One line for the run, one per stage and cluster."""
    s = run.get("status") or {}
    lines = [
        f"phase={s.get('phase', '-')} stage={s.get('stage', '-')} "
        f"clusters={s.get('clustersPassed', '-')} | {s.get('message') or ''}"
    ]
    for stage in s.get("stages") or []:
        lines.append(f"  stage {stage['name']}: {stage['state']}")
        for c in stage.get("clusters") or []:
            drift = c.get("driftedObjects")
            lines.append(
                f"    {c['name']:8} {c['state']:11} iterations={c.get('iterations', 0)} "
                f"verdict={c.get('lastVerdict') or '-':4} "
                f"drift={'-' if drift is None else drift}"
            )
    return lines


def approve(api: client.ApiClient, stage: str, who: str) -> None:
    annotations = {"kloop.dev/approve": stage, "kloop.dev/approved-by": who}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "loopruns", RUN, {"metadata": {"annotations": annotations}}
    )


def whoami(api: client.ApiClient) -> str:
    review = client.AuthenticationV1Api(api).create_self_subject_review({"metadata": {}})
    return str(review.status.user_info.username)


def greeting_in(target: Any) -> str:
    try:
        cm = client.CoreV1Api(target_client(target)).read_namespaced_config_map("greeting", WORK)
    except ApiException as err:
        return f"(none: {err.status})"
    return json.dumps((cm.data or {}).get("greeting"))


def main() -> int:
    say("cluster")
    kubeconfig = local.up()
    api = config.new_client_from_config(config_file=str(kubeconfig))
    say("installing the CRDs from crds/")
    print("\n".join(install_crds(api)))
    fresh_namespace(api, NAMESPACE)
    say("the fleet: three extra clusters that agent pods reach on the bridge address")
    core = client.CoreV1Api(api)
    targets = {}
    for name in FLEET:
        target = add_target_cluster(name)
        grant_agent(target, AGENTS, AGENT, WORK)
        try:
            client.CoreV1Api(target_client(target)).delete_namespaced_config_map("greeting", WORK)
        except ApiException as err:
            if err.status != 404:
                raise
        secret = registered(
            target,
            NAMESPACE,
            **{
                "kloop.dev/allowed-namespaces": NAMESPACE,
                "kloop.dev/agent-service-account": f"{AGENTS}/{AGENT}",
            },
        )
        secret["metadata"]["labels"] = {**secret["metadata"]["labels"], "tier": TIERS[name]}
        core.create_namespaced_secret(NAMESPACE, secret)
        targets[name] = target
        print(f"  {name}: {target.server} (tier {TIERS[name]})")
    log_dir = STATE_ROOT if STATE_ROOT.exists() else Path("/tmp")
    operator = OperatorProcess(
        kubeconfig,
        log_dir / "kloop-fleet-demo-operator.log",
        [NAMESPACE],
        env={"KLOOP_OPERATOR_NAMESPACE": NAMESPACE},
    )
    say(f"starting the operator (log: {operator.log_path})")
    operator.start()
    try:
        say(f"kubectl apply -f {EXAMPLE.relative_to(EXAMPLE.parents[2])}")
        show(kubeconfig, "apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "LoopRun",
            "metadata": {"name": RUN},
            "spec": {"loopRef": {"name": "greeting-rollout"}},
        }
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "loopruns", body
        )
        say("progress (per stage and cluster)")
        run = watch(api)
    finally:
        operator.stop()
    status = run["status"]
    say("kubectl get")
    show(kubeconfig, "get", "-n", NAMESPACE, "loopruns")
    say("what each cluster holds (fleet-demo/greeting)")
    for name, target in targets.items():
        print(f"  {name}: {greeting_in(target)}")
    binary = kubectl() if kubectl().exists() else "kubectl"
    out = subprocess.run(
        [str(binary), "--kubeconfig", str(kubeconfig), "get", "ns", WORK],
        capture_output=True,
        text=True,
    )
    print(f"  management cluster: {'no namespace ' + WORK if out.returncode else 'has ' + WORK}")
    ok = status["phase"] == "Succeeded"
    say(f"run {status['phase']}" + ("" if ok else f" (!): {status.get('message')}"))
    return 0 if ok else 1


def watch(api: client.ApiClient, timeout: float = 600) -> dict[str, Any]:
    deadline, last = time.monotonic() + timeout, [""]
    approved = False
    while time.monotonic() < deadline:
        run = get_run(api, NAMESPACE, RUN)
        lines = progress(run)
        if lines != last:
            print("\n".join(lines), flush=True)
            last = lines
        status = run.get("status") or {}
        if status.get("phase") == "AwaitingApproval" and not approved:
            who = whoami(api)
            say(f"approving stage {status.get('stage')!r} as {who}")
            approve(api, status.get("stage") or "", who)
            approved = True
        if finished(run):
            return run
        time.sleep(1)
    raise SystemExit(f"the run did not finish in {timeout:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
