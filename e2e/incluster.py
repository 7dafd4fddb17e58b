"""The operator as users run it: the chart's Deployment, from the image ``make image`` builds.

``KLOOP_E2E_OPERATOR=chart`` makes the ``operator`` fixture hand out an :class:`InClusterOperator`
instead of a host process. The release is installed once per session and serves every namespace
matching ``ic-*``; the tests of that session get such namespaces, labelled so the chart's admission
policies bind to them. Tests marked ``both_modes`` run in either mode; the others are skipped in
chart mode (they start operators of their own, which would serve the same runs twice).
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from e2e.cluster import local
from e2e.cluster.kit import kit_image
from e2e.cluster.paths import kubectl, run_kubectl

MODE_ENV = "KLOOP_E2E_OPERATOR"
RELEASE = "kloop-e2e"
RELEASE_NAMESPACE = "kloop-e2e-system"
NAMESPACE_PREFIX = "ic-"
NAMESPACE_LABEL = ("kloop.dev/e2e-operator", "chart")


def chart_mode() -> bool:
    """Whether this session runs the operator from the chart (else as a host process)."""
    mode = os.environ.get(MODE_ENV, "process")
    if mode not in ("process", "chart"):
        raise ValueError(f"{MODE_ENV} must be 'process' or 'chart', not {mode!r}")
    return mode == "chart"


def release_values() -> dict[str, object]:
    """The chart values of the session's release: ``ic-*`` namespaces, policies bound by label."""
    key, value = NAMESPACE_LABEL
    return {
        "watchNamespaces": [f"{NAMESPACE_PREFIX}*"],
        "admission": {"namespaceSelector": {"matchLabels": {key: value}}},
        "logLevel": "INFO",
        "kitImage": {"repository": kit_image().rpartition(":")[0]},
    }


class InClusterOperator:
    """Start, stop, kill and read the logs of the release's operator, like ``OperatorProcess``.

    Each pod's log is streamed to ``log_path`` from its start, so lines written while it stops
    (after SIGTERM) are kept after the pod is gone, as a host process's log file would keep them.
    """

    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self._streams: list[subprocess.Popen[bytes]] = []

    def _kubectl(self, *args: str) -> str:
        return run_kubectl(self.kubeconfig, f"-n={RELEASE_NAMESPACE}", *args, timeout=120).stdout

    def _pods(self) -> list[str]:
        selector = f"app.kubernetes.io/instance={RELEASE}"
        return self._kubectl("get", "pods", "-l", selector, "-o", "name").split()

    def _scale(self, replicas: int) -> None:
        self._kubectl("scale", f"deployment/{RELEASE}", f"--replicas={replicas}")

    def _wait_no_pods(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self._pods():
            if time.monotonic() > deadline:
                raise RuntimeError(f"operator pods still there after {timeout}s: {self._pods()}")
            time.sleep(0.3)
        for stream in self._streams:
            stream.wait(10)
        self._streams.clear()

    def attach(self, from_pod_start: bool = False) -> None:
        """Follow the running operator pod's log: from now on, or from the pod's start.

        A test attaches from now: the release serves the whole session, and a test must not find
        in its log what the operator wrote for an earlier test. :meth:`start` attaches from the
        new pod's start, so its start-up lines are there too.
        """
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._kubectl("rollout", "status", f"deployment/{RELEASE}", "--timeout=120s")
        window = [] if from_pod_start else [f"--since-time={since}"]
        for pod in self._pods():
            log = self.log_path.open("ab")
            self._streams.append(
                subprocess.Popen(
                    [
                        str(kubectl()),
                        f"--kubeconfig={self.kubeconfig}",
                        f"-n={RELEASE_NAMESPACE}",
                        "logs",
                        "-f",
                        *window,
                        pod,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def start(self) -> None:
        """Scale the Deployment back to one pod and wait until it is Ready."""
        self._scale(1)
        self.attach(from_pod_start=True)

    def stop(self) -> None:
        """Scale to zero: the pod gets SIGTERM and its grace period, as on a rollout."""
        self._scale(0)
        self._wait_no_pods()

    def kill(self) -> None:
        """SIGKILL the operator's process through the node's containerd, then keep it down.

        No SIGTERM, no grace: as when a node dies or the container is OOM-killed. The scale-down
        right after stops the kubelet from restarting the container (it is then only removed).
        """
        for container_id in self._container_ids():
            subprocess.run(
                [
                    "ctr",
                    "--address",
                    str(local.CONTAINERD_SOCKET),
                    "-n",
                    "k8s.io",
                    "tasks",
                    "kill",
                    "--signal",
                    "SIGKILL",
                    container_id,
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
        self._scale(0)
        self._wait_no_pods()

    def _container_ids(self) -> list[str]:
        selector = f"app.kubernetes.io/instance={RELEASE}"
        out = self._kubectl(
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={.items[*].status.containerStatuses[*].containerID}",
        )
        return [cid.removeprefix("containerd://") for cid in out.split()]

    def ensure_running(self) -> None:
        """Bring the operator back if a test left it stopped (the next test expects it)."""
        if not self._pods():
            self._scale(1)
            self._kubectl("rollout", "status", f"deployment/{RELEASE}", "--timeout=120s")

    def close(self) -> None:
        """Stop following logs (the release itself is the session's to remove)."""
        for stream in self._streams:
            stream.terminate()
        self._streams.clear()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the operator pods' logs, oldest pod first, for failure messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
