"""kloop's greeting loop (e2e/manifests/greeting-loop.yaml) as an Argo recursive steps workflow.

The same work as the Loop: a maker pod writes a greeting (one mistake fewer per iteration, guided
by the checker's reasons), a checker pod judges it, and the ``loop`` template calls itself with
iteration + 1 while the verdict is ``fail`` (at most 5 iterations, the Loop's ``maxIterations``);
an ``onExit`` handler pod plays the teardown. Output passes maker -> checker -> next iteration as
output parameters (files the wait sidecar reports), Argo's equivalent of kloop's termination
messages. The checker passes on iteration 3: 7 pods per run, each with init + wait + main.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client, config, watch

from e2e.cluster.images import BUSYBOX_IMAGE
from e2e.cluster.paths import ADMIN_KUBECONFIG

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "workflows"
EXECUTOR_SERVICE_ACCOUNT = "argo-executor"
MAX_ITERATIONS = 5
FINISHED = ("Succeeded", "Failed", "Error")
WORKFLOW_LABEL = "workflows.argoproj.io/workflow"

_MAKER = """set -e
case "{{inputs.parameters.iteration}}" in
  1) text="helo wrld" ;;
  2) text="hello wrld" ;;
  *) text="hello, world" ;;
esac
echo "iteration {{inputs.parameters.iteration}}; feedback: {{inputs.parameters.feedback}}"
printf '%s' "$text" > /tmp/greeting
"""

_CHECKER = """g='{{inputs.parameters.greeting}}'
if [ "$g" = "hello, world" ]; then
  verdict=pass; why="greeting is right"
else
  verdict=fail
  case "$g" in
    *helo*) why="missing letter l in helo" ;;
    *wrld*) why="missing letter o in wrld" ;;
    *) why="missing comma after hello" ;;
  esac
fi
printf '%s' "$verdict" > /tmp/verdict
printf '%s' "$why" > /tmp/reasons
"""


def _container(script: str) -> dict[str, Any]:
    return {
        "image": BUSYBOX_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c"],
        "args": [script],
    }


def _params(**values: str) -> dict[str, Any]:
    return {"parameters": [{"name": k, "value": v} for k, v in values.items()]}


def _outputs(*names: str) -> dict[str, Any]:
    return {"parameters": [{"name": n, "valueFrom": {"path": f"/tmp/{n}"}} for n in names]}


def greeting_workflow(name: str) -> dict[str, Any]:
    """The greeting loop as a Workflow named ``name`` (maker -> checker, recursing until pass)."""
    again = (
        "{{steps.checker.outputs.parameters.verdict}} == fail && "
        f"{{{{inputs.parameters.iteration}}}} < {MAX_ITERATIONS}"
    )
    loop = {
        "name": "loop",
        "inputs": {"parameters": [{"name": "iteration"}, {"name": "feedback"}]},
        "steps": [
            [{"name": "maker", "template": "maker", "arguments": _params(
                iteration="{{inputs.parameters.iteration}}",
                feedback="{{inputs.parameters.feedback}}")}],
            [{"name": "checker", "template": "checker", "arguments": _params(
                greeting="{{steps.maker.outputs.parameters.greeting}}")}],
            [{"name": "next", "template": "loop", "when": again, "arguments": _params(
                iteration="{{=asInt(inputs.parameters.iteration) + 1}}",
                feedback="{{steps.checker.outputs.parameters.reasons}}")}],
        ],
    }  # fmt: skip
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workflow",
        "metadata": {"name": name, "labels": {"kloop.dev/bench": "argo-greeting"}},
        "spec": {
            "entrypoint": "loop",
            "onExit": "teardown",
            "serviceAccountName": EXECUTOR_SERVICE_ACCOUNT,
            "arguments": _params(iteration="1", feedback="none"),
            "templates": [
                loop,
                {
                    "name": "maker",
                    "inputs": {"parameters": [{"name": "iteration"}, {"name": "feedback"}]},
                    "container": _container(_MAKER),
                    "outputs": _outputs("greeting"),
                },
                {
                    "name": "checker",
                    "inputs": {"parameters": [{"name": "greeting"}]},
                    "container": _container(_CHECKER),
                    "outputs": _outputs("verdict", "reasons"),
                },
                {
                    "name": "teardown",
                    "container": _container("echo tearing down {{workflow.name}}"),
                },
            ],
        },
    }


def _client(api: client.ApiClient | None) -> client.ApiClient:
    """``api``, or a client of the local cluster's admin kubeconfig."""
    return api or config.new_client_from_config(config_file=str(ADMIN_KUBECONFIG))


def submit(
    namespace: str, workflow: dict[str, Any], *, api: client.ApiClient | None = None
) -> dict[str, Any]:
    """Create ``workflow`` in ``namespace``; return the created object."""
    created: dict[str, Any] = client.CustomObjectsApi(_client(api)).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, workflow
    )
    return created


def _finished(wf: dict[str, Any]) -> bool:
    status = wf.get("status") or {}
    return status.get("phase") in FINISHED and bool(status.get("finishedAt"))


def wait_finished(
    namespace: str, name: str, timeout: float = 300, *, api: client.ApiClient | None = None
) -> dict[str, Any]:
    """Return the Workflow once it has finished (exit handler included); raise after ``timeout``.

    Watches rather than polls, so the moment it returns is within one event of the controller's
    final status write: the caller's clock around submit -> this is create -> done.
    """
    custom = client.CustomObjectsApi(_client(api))
    deadline = time.monotonic() + timeout
    selector = f"metadata.name={name}"
    while (left := deadline - time.monotonic()) > 0:
        listed = custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, field_selector=selector
        )
        for wf in listed.get("items", []):
            if _finished(wf):
                return dict(wf)
        stream = watch.Watch().stream(
            custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
            field_selector=selector, resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=max(1, int(left)),
        )  # fmt: skip
        for event in stream:
            wf = event["object"]
            if event["type"] in ("ADDED", "MODIFIED") and _finished(wf):
                return dict(wf)
    raise TimeoutError(f"workflow {namespace}/{name} not finished within {timeout}s")


def pods_of(
    namespace: str, name: str, *, api: client.ApiClient | None = None
) -> list[client.V1Pod]:
    """The pods Argo created for workflow ``name`` (maker, checker and exit handler pods)."""
    pods = client.CoreV1Api(_client(api)).list_namespaced_pod(
        namespace, label_selector=f"{WORKFLOW_LABEL}={name}"
    )
    return list(pods.items)
