"""Agent pods: render the manifest for a PodRequest (the agent contract) and read pods back."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

from kloop.adapters.workspace import WORKSPACE_DIR, add_workspace
from kloop.api.loop import LoopSpec, Pricing
from kloop.api.looprun import LoopRunSpec
from kloop.api.pod import PodTemplate
from kloop.core import names, shard
from kloop.core.connectors import MCP_FILE
from kloop.core.model import LOCAL_CLUSTER, ContainerEnd, ObservedPod, PodRequest, Role

Json = dict[str, Any]

MEMORY_DIR = "/kloop/memory"
FEEDBACK_FILE = "/kloop/feedback.json"
SKILLS_DIR = "/kloop/skills"
TARGET_DIR = "/kloop/target"
TARGET_KUBECONFIG = f"{TARGET_DIR}/kubeconfig"
MCP_CONFIG = "/kloop/mcp.json"


def _template_for(req: PodRequest, loop: LoopSpec) -> tuple[PodTemplate, int]:
    if req.role is Role.MAKER:
        return loop.maker.template, loop.maker.timeout_seconds
    if req.role is Role.TEARDOWN:
        assert loop.teardown is not None
        return loop.teardown.template, loop.teardown.timeout_seconds
    checker = next(c for c in loop.checkers if c.name == req.checker)
    assert checker.template is not None
    return checker.template, checker.timeout_seconds


def _pricing_for(req: PodRequest, loop: LoopSpec) -> Pricing | None:
    """The agent's own prices, else the Loop's (teardown pods use the Loop's)."""
    own = None
    if req.role is Role.MAKER:
        own = loop.maker.pricing
    elif req.checker:
        own = next((c.pricing for c in loop.checkers if c.name == req.checker), None)
    return own or loop.pricing


def pricing_env(pricing: Pricing | None) -> dict[str, str]:
    """KLOOP_PRICE_* (US dollars per million tokens) for ``kloop-agent run``; none unpriced."""
    if pricing is None:
        return {}
    cached = pricing.cached_input_usd_per_mtok
    return {
        "KLOOP_PRICE_INPUT_USD_PER_MTOK": repr(pricing.input_usd_per_mtok),
        "KLOOP_PRICE_OUTPUT_USD_PER_MTOK": repr(pricing.output_usd_per_mtok),
        **({"KLOOP_PRICE_CACHED_INPUT_USD_PER_MTOK": repr(cached)} if cached is not None else {}),
    }


def contract_env(
    req: PodRequest, run: Json, loop_name: str, loop: LoopSpec, run_spec: LoopRunSpec
) -> list[Json]:
    """The KLOOP_* variables of the agent contract (DESIGN.md §2)."""
    goal = loop.goal + (f"\n{run_spec.goal_suffix}" if run_spec.goal_suffix else "")
    env = {
        "KLOOP_LOOP": loop_name,
        "KLOOP_RUN": run["metadata"]["name"],
        "KLOOP_ITERATION": str(req.iteration),
        "KLOOP_STAGE": req.stage,
        "KLOOP_CLUSTER": req.cluster,
        "KLOOP_ROLE": req.role.value,
        "KLOOP_GOAL": goal,
        "KLOOP_BRANCH": names.branch(
            run["metadata"]["name"], req.stage, req.cluster, req.iteration
        ),
        "KLOOP_CONTEXT": json.dumps(run_spec.context or {}),
        "KLOOP_MEMORY_DIR": MEMORY_DIR,
        "KLOOP_FEEDBACK": FEEDBACK_FILE,
    }
    if req.checker:
        env["KLOOP_CHECKER"] = req.checker
    if req.workspace is not None:
        env["KLOOP_WORKSPACE"] = WORKSPACE_DIR
    if MCP_FILE in req.files:
        env["KLOOP_MCP_CONFIG"] = MCP_CONFIG
    env.update(pricing_env(_pricing_for(req, loop)))
    variables: list[Json] = [{"name": k, "value": v} for k, v in env.items()]
    # connector headers: from their Secret by reference, so no value is in the pod spec
    variables += [
        {"name": e.name, "valueFrom": {"secretKeyRef": {"name": e.secret, "key": e.key}}}
        for e in req.secret_env
    ]
    return variables


# Capabilities that Kubernetes refuses together with allowPrivilegeEscalation: false.
_ESCALATING_CAPABILITIES = frozenset({"SYS_ADMIN", "CAP_SYS_ADMIN"})


def _harden_container(container: Json) -> None:
    context: Json = container.get("securityContext") or {}
    container["securityContext"] = context
    capabilities = context.get("capabilities") or {}
    escalates = context.get("privileged") is True or bool(
        _ESCALATING_CAPABILITIES & set(capabilities.get("add") or [])
    )
    if not escalates:  # the apiserver rejects the pair; the template's privilege wins
        context.setdefault("allowPrivilegeEscalation", False)
    context.setdefault("capabilities", {"drop": ["ALL"]})


def apply_safe_defaults(spec: Json) -> None:
    """Least privilege unless the template says otherwise (docs/agent-contract.md).

    An agent runs code a model wrote: no API token, no service env vars, the runtime's seccomp
    profile, no privilege escalation, no capabilities. Each field the template sets explicitly
    is left as written: that is the opt-out.
    """
    spec.setdefault("automountServiceAccountToken", False)
    spec.setdefault("enableServiceLinks", False)
    if (spec.get("os") or {}).get("name") == "windows":  # the rest is Linux only
        return
    pod_context: Json = spec.get("securityContext") or {}
    pod_context.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    spec["securityContext"] = pod_context
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            _harden_container(container)


def render_pod(
    req: PodRequest,
    run: Json,
    loop_name: str,
    loop: LoopSpec,
    run_spec: LoopRunSpec,
    memory_config_map: str,
    owner: Json,
) -> Json:
    """The pod manifest: the user's template plus the contract's env, files and labels."""
    template, timeout = _template_for(req, loop)
    raw = template.to_kube()
    spec: Json = copy.deepcopy(raw["spec"])
    meta = raw.get("metadata") or {}
    # the run's shard label, never the template's: the run's replica must see its pods' events
    run_labels = run["metadata"].get("labels") or {}
    labels = {
        **shard.inherit(meta.get("labels") or {}, run_labels),
        names.LABEL_RUN: run["metadata"]["name"],
        names.LABEL_LOOP: loop_name,
        names.LABEL_ROLE: req.role.value,
        names.LABEL_ITERATION: str(req.iteration),
        names.LABEL_STAGE: req.stage,
        names.LABEL_CLUSTER: req.cluster,
    }
    if req.checker:
        labels[names.LABEL_CHECKER] = req.checker
    inputs = names.inputs_config_map_name(req.name)
    volumes = [
        {"name": "kloop-memory", "configMap": {"name": memory_config_map, "optional": True}},
        {"name": "kloop-inputs", "configMap": {"name": inputs}},
    ]
    mounts = [{"name": "kloop-memory", "mountPath": MEMORY_DIR, "readOnly": True}]
    for file in sorted(req.files):
        mounts.append(
            {
                "name": "kloop-inputs",
                "mountPath": f"/kloop/{file}",
                "subPath": file,
                "readOnly": True,
            }
        )
    for i, skill in enumerate(loop.skills or []):
        volume = f"kloop-skill-{i}"
        volumes.append({"name": volume, "configMap": {"name": skill.config_map_name}})
        mounts.append(
            {"name": volume, "mountPath": f"{SKILLS_DIR}/{skill.config_map_name}", "readOnly": True}
        )
    env = contract_env(req, run, loop_name, loop, run_spec)
    if req.cluster != LOCAL_CLUSTER:
        # the minted token's kubeconfig (adapters/clusters.py), written before the pod
        volumes.append(
            {
                "name": "kloop-target",
                "secret": {
                    "secretName": names.target_secret_name(req.name),
                    "items": [{"key": "kubeconfig", "path": "kubeconfig"}],
                },
            }
        )
        mounts.append({"name": "kloop-target", "mountPath": TARGET_DIR, "readOnly": True})
        env.append({"name": "KUBECONFIG", "value": TARGET_KUBECONFIG})
    for container in spec["containers"]:
        container["env"] = [*env, *(container.get("env") or [])]
        container["volumeMounts"] = [*(container.get("volumeMounts") or []), *mounts]
    if req.workspace is not None and loop.workspace is not None:
        add_workspace(spec, req.workspace, loop.workspace.git)
    # only the file the agent wrote: a crashed agent's log tail may hold secrets, and it would
    # spread to status, Events, memory and feedback. A template opts in to the tail explicitly.
    spec["containers"][0].setdefault("terminationMessagePolicy", "File")
    apply_safe_defaults(spec)
    spec["volumes"] = [*(spec.get("volumes") or []), *volumes]
    spec["restartPolicy"] = "Never"
    spec.setdefault("activeDeadlineSeconds", timeout)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": req.name,
            "namespace": run["metadata"]["namespace"],
            "labels": labels,
            "annotations": dict(meta.get("annotations") or {}),
            "ownerReferences": [owner],
        },
        "spec": spec,
    }


def render_inputs(req: PodRequest, run: Json, owner: Json) -> Json:
    """The ConfigMap that carries a pod's input files (feedback.json, maker.json)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.inputs_config_map_name(req.name),
            "namespace": run["metadata"]["namespace"],
            "labels": shard.inherit(
                {names.LABEL_RUN: run["metadata"]["name"]}, run["metadata"].get("labels") or {}
            ),
            "ownerReferences": [owner],
        },
        "data": dict(req.files),
    }


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def observe_pod(pod: Json) -> ObservedPod:
    """What the core needs of a pod: phase, and the first container's end (or why it waits)."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    first = pod["spec"]["containers"][0]["name"]
    container: Json = next((c for c in statuses if c.get("name") == first), {})
    state = container.get("state") or {}
    terminated = state.get("terminated") or {}
    waiting = state.get("waiting") or {}
    reason = status.get("reason") or terminated.get("reason") or waiting.get("reason")
    if waiting and waiting.get("reason") in ("ErrImageNeverPull", "ImagePullBackOff"):
        reason = waiting["reason"]
    ours = {}  # kloop's own init containers (the workspace clone and push)
    for init in status.get("initContainerStatuses") or []:
        if str(init.get("name", "")).startswith("kloop-"):
            stuck = ((init.get("state") or {}).get("waiting") or {}).get("reason")
            if stuck in ("ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull"):
                reason = stuck  # the kit image is missing: the agent can never start
            ended = (init.get("state") or {}).get("terminated")
            ours[init["name"]] = ContainerEnd(
                terminated=ended is not None,
                exit_code=(ended or {}).get("exitCode"),
                message=(ended or {}).get("message"),
            )
    return ObservedPod(
        name=pod["metadata"]["name"],
        phase=status.get("phase") or "Pending",
        created_at=_time(pod["metadata"].get("creationTimestamp")),
        exit_code=terminated.get("exitCode"),
        reason=reason,
        message=terminated.get("message") or status.get("message"),
        deleting=pod["metadata"].get("deletionTimestamp") is not None,
        uid=pod["metadata"].get("uid") or "",
        kloop_containers=ours,
    )


LABEL_RUN_UID = "kloop.dev/run-uid"


def place_in_target(manifest: Json, namespace: str, service_account: str, run_uid: str) -> Json:
    """The pod as it runs inside a target cluster (placement Target).

    In the agent ServiceAccount's namespace, as that ServiceAccount (whatever the template says)
    with no token mounted (it has the minted kubeconfig), with no owner (ownerReferences do not
    cross clusters: kloop deletes it) and without the memory and skills volumes (those
    ConfigMaps live in the operator's cluster). The run's uid is a
    label, so only this run's pods are read back.
    """
    placed = copy.deepcopy(manifest)
    meta = placed["metadata"]
    meta["namespace"] = namespace
    meta.pop("ownerReferences", None)
    meta["labels"][LABEL_RUN_UID] = run_uid
    spec = placed["spec"]
    # the agent's identity there is the cluster owner's choice, not the Loop author's
    spec["serviceAccountName"] = service_account
    spec["automountServiceAccountToken"] = False
    spec.pop("serviceAccount", None)

    def stays(name: str | None) -> bool:  # memory and skills live in the operator's cluster
        return not (name or "").startswith(("kloop-memory", "kloop-skill-"))

    spec["volumes"] = [v for v in spec.get("volumes") or [] if stays(v.get("name"))]
    for container in spec["containers"]:
        container["volumeMounts"] = [
            m for m in container.get("volumeMounts") or [] if stays(m.get("name"))
        ]
    return placed


def place_object_in_target(obj: Json, namespace: str) -> Json:
    """An input ConfigMap or kubeconfig Secret of a pod placed in a target: no owner there."""
    placed = copy.deepcopy(obj)
    placed["metadata"]["namespace"] = namespace
    placed["metadata"].pop("ownerReferences", None)
    return placed
