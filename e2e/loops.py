"""Helpers for e2e tests and the demo: apply Loops and LoopRuns, wait on them, read memory."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

MANIFESTS = Path(__file__).resolve().parent / "manifests"
GROUP, VERSION = "kloop.dev", "v1alpha1"
Json = dict[str, Any]


def greeting_loop() -> Json:
    """The demo loop (passes on iteration 3), as a dict to tweak per test."""
    loop: Json = yaml.safe_load((MANIFESTS / "greeting-loop.yaml").read_text())
    return copy.deepcopy(loop)


def create_loop(api: client.ApiClient, namespace: str, loop: Json) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "loops", loop
    )


def start_run(api: client.ApiClient, namespace: str, loop: str, name: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoopRun",
        "metadata": {"name": name},
        "spec": {"loopRef": {"name": loop}, "context": {"ticket": "DEMO-1"}},
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns", body
    )


def get_run(api: client.ApiClient, namespace: str, name: str) -> Json:
    run: Json = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns", name
    )
    return run


def finished(run: Json) -> bool:
    """Final phase reached and the teardown (if any) done."""
    status = run.get("status") or {}
    teardown = (status.get("teardown") or {}).get("state")
    return status.get("phase") in ("Succeeded", "Failed", "Halted") and teardown != "Running"


def wait_finished(
    api: client.ApiClient, namespace: str, name: str, timeout: float = 180, show: bool = False
) -> Json:
    """Poll the run until it finished; print each change when ``show``."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        run = get_run(api, namespace, name)
        line = progress_line(run)
        if show and line != last:
            print(line, flush=True)
        last = line
        if finished(run):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {namespace}/{name} not finished after {timeout}s: {last}")


def progress_line(run: Json) -> str:
    """One line like kubectl get, plus the latest message."""
    s = run.get("status") or {}
    usage = s.get("usage") or {}
    return (
        f"phase={s.get('phase', '-'):<9} iteration={s.get('iteration', 0)} "
        f"verdict={s.get('lastVerdict') or '-':<4} tokens={usage.get('tokens', 0):<5} "
        f"| {s.get('message') or ''}"
    )


def memory(api: client.ApiClient, namespace: str, loop: str) -> tuple[str, Json]:
    """The loop's memory: markdown and the JSON log."""
    cm = client.CoreV1Api(api).read_namespaced_config_map(f"{loop}-memory", namespace)
    return cm.data["memory.md"], json.loads(cm.data["log.json"])


def run_pods(api: client.ApiClient, namespace: str, run: str) -> list[Any]:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"kloop.dev/run={run}"
    )
    return list(pods.items)


def events_for(api: client.ApiClient, namespace: str, name: str) -> list[Any]:
    found = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return list(found.items)
