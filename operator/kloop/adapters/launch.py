"""Start a run of a Loop for a schedule or a trigger, obeying its concurrencyPolicy."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kloop.adapters import events
from kloop.adapters.kube import Json, Kube, is_status, owner_reference
from kloop.api import GROUP, VERSION
from kloop.api.loop import ConcurrencyPolicy
from kloop.core import names, shard
from kloop.core.launch import RunRequest, plan_start
from kloop.core.loops import run_finished

log = logging.getLogger("kloop.launch")


@dataclass(frozen=True)
class LaunchOutcome:
    """What became of a RunRequest."""

    created: bool
    existed: bool
    aborted: tuple[str, ...]
    why: str


is_finished = run_finished
"""A run whose phase is final and whose teardown is over (or none)."""


async def get_loop(kube: Kube, namespace: str, name: str) -> Json | None:
    """The Loop as stored now, None when it is gone."""
    try:
        loop: Json = await kube.call(
            kube.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "loops", name
        )
    except Exception as err:
        if is_status(err, 404):
            return None
        raise
    return loop


async def runs_of(kube: Kube, loop: Json) -> list[Json]:
    """Every LoopRun in the Loop's namespace whose loopRef names it (manual ones included)."""
    meta = loop["metadata"]
    listed = await kube.call(
        kube.custom.list_namespaced_custom_object, GROUP, VERSION, meta["namespace"], "loopruns"
    )
    return [
        r
        for r in listed["items"]
        if ((r.get("spec") or {}).get("loopRef") or {}).get("name") == meta["name"]
    ]


def new_run(loop: Json, request: RunRequest) -> Json:
    """The LoopRun object for a request: owned by the Loop (so history pruning may delete it).

    It carries the Loop's ``kloop.dev/shard`` label, so the replica serving the Loop serves the run
    (whether the Loop controller or ``kubectl kloop run`` creates it).
    """
    meta = loop["metadata"]
    spec: Json = {"loopRef": {"name": meta["name"]}}
    if request.context:
        spec["context"] = dict(request.context)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoopRun",
        "metadata": {
            "name": request.name,
            "namespace": meta["namespace"],
            "labels": shard.inherit({names.LABEL_LOOP: meta["name"]}, meta.get("labels") or {}),
            "annotations": dict(request.annotations),
            "ownerReferences": [owner_reference(loop, controller=True)],
        },
        "spec": spec,
    }


async def launch(kube: Kube, loop: Json, request: RunRequest) -> LaunchOutcome:
    """Create the requested run unless the policy says otherwise; abort runs it replaces.

    A run that already exists under the request's name is never created twice (409 is success).
    """
    policy = ConcurrencyPolicy((loop.get("spec") or {}).get("concurrencyPolicy") or "Forbid")
    runs = await runs_of(kube, loop)
    if any(r["metadata"]["name"] == request.name for r in runs):
        return LaunchOutcome(False, True, (), f"{request.name} exists already")
    active = [r["metadata"]["name"] for r in runs if not is_finished(r)]
    plan = plan_start(policy, active, request)
    meta = loop["metadata"]
    for name in plan.abort:
        patch = {
            "metadata": {
                "annotations": {
                    names.ANNOTATION_ABORT: "true",
                    names.ANNOTATION_ABORT_REASON: f"replaced by {request.name}",
                }
            }
        }
        try:
            await kube.call(
                kube.custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                meta["namespace"],
                "loopruns",
                name,
                patch,
            )
        except Exception as err:
            if is_status(err, 404):
                continue  # deleted meanwhile: nothing left to replace
            raise
        await events.record(kube, loop, "Normal", "RunReplaced", f"{name} aborted: {plan.why}")
    if not plan.create:
        await events.record(kube, loop, "Warning", "RunSkipped", plan.why)
        return LaunchOutcome(False, False, plan.abort, plan.why)
    try:
        await kube.call(
            kube.custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            meta["namespace"],
            "loopruns",
            new_run(loop, request),
        )
    except Exception as err:
        if is_status(err, 409):
            return LaunchOutcome(False, True, plan.abort, f"{request.name} exists already")
        raise
    log.info("run started", extra={"run": request.name, "namespace": meta["namespace"]})
    await events.record(kube, loop, "Normal", "RunStarted", f"{request.name}: {plan.why}")
    return LaunchOutcome(True, False, plan.abort, plan.why)
