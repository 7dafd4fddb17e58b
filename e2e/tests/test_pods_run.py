"""The local node really runs pods: busybox image, shell command, termination message."""

from __future__ import annotations

import pytest
from kubernetes import client

from e2e.cluster.images import BUSYBOX_IMAGE
from e2e.helpers import run_pod

pytestmark = pytest.mark.e2e


def test_busybox_pod_runs_a_shell_command_and_its_termination_message_is_readable(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    script = 'n=$((6*7)); printf \'{"answer": %s}\' "$n" > /dev/termination-log'
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="answer"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[
                client.V1Container(
                    name="main",
                    image=BUSYBOX_IMAGE,
                    image_pull_policy="IfNotPresent",
                    command=["sh", "-c", script],
                )
            ],
        ),
    )
    done = run_pod(core, namespace, pod, timeout=120)
    assert done.status.phase == "Succeeded"
    terminated = done.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    assert terminated.message == '{"answer": 42}'


def test_failing_command_reports_its_exit_code(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="fails"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[
                client.V1Container(
                    name="main",
                    image=BUSYBOX_IMAGE,
                    image_pull_policy="IfNotPresent",
                    command=["sh", "-c", "echo broken >&2; exit 3"],
                )
            ],
        ),
    )
    done = run_pod(core, namespace, pod, timeout=120)
    assert done.status.phase == "Failed"
    assert done.status.container_statuses[0].state.terminated.exit_code == 3
