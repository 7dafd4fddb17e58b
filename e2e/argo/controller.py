"""Argo's workflow-controller as a host process against the local cluster, for benchmarks.

``ArgoController`` installs what the controller and its executor pods need (Argo's minimal CRDs
when absent, the ``workflow-controller-configmap`` naming the locally built argoexec image, and a
ServiceAccount with the executor's rights), starts the controller namespaced to one namespace,
and always stops it: SIGTERM, then SIGKILL after a short grace, because it ignores SIGTERM.
Executor pods reach the apiserver through the ``kubernetes`` Service (kube-proxy runs on the
local cluster), so no relay is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from e2e.argo.build import binary, module_dir
from e2e.argo.image import ensure_argoexec_image
from e2e.argo.workflow import EXECUTOR_SERVICE_ACCOUNT, GROUP, PLURAL, VERSION
from e2e.cluster.build import progress
from e2e.cluster.paths import ADMIN_KUBECONFIG, run_kubectl
from e2e.procs import free_port, log_tail, stop_process

CONFIGMAP = "workflow-controller-configmap"
LEASE = "workflow-controller"
STOP_GRACE = 3.0  # seconds after SIGTERM before SIGKILL: the controller ignores SIGTERM
_CRD_GROUP_SUFFIX = ".argoproj.io"


def crd_dir() -> Path:
    """Argo's minimal CRDs (schemas preserve unknown fields) from the module source."""
    return module_dir() / "manifests" / "base" / "crds" / "minimal"


def _crd_names(directory: Path) -> list[str]:
    """``<plural>.argoproj.io`` from the file names ``argoproj.io_<plural>.yaml``."""
    return sorted(
        f"{p.stem.split('_', 1)[1]}{_CRD_GROUP_SUFFIX}"
        for p in directory.glob("argoproj.io_*.yaml")
    )


def _argo_crds(ext: client.ApiextensionsV1Api, timeout: float = 60) -> set[str]:
    """The Argo CRDs the cluster has, once none of them is still being deleted."""
    deadline = time.monotonic() + timeout
    while True:
        crds = [
            c
            for c in ext.list_custom_resource_definition().items
            if c.metadata.name.endswith(_CRD_GROUP_SUFFIX)
        ]
        if not any(c.metadata.deletion_timestamp for c in crds):
            return {c.metadata.name for c in crds}
        if time.monotonic() > deadline:
            raise RuntimeError(f"Argo CRDs still being deleted after {timeout}s")
        time.sleep(0.5)


def _established(ext: client.ApiextensionsV1Api, name: str) -> bool:
    try:
        crd = ext.read_custom_resource_definition(name)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def install_crds(kubeconfig: Path, ext: client.ApiextensionsV1Api, names: list[str]) -> None:
    """Server-side apply the named Argo CRDs and wait until the apiserver serves them.

    Polled here rather than ``kubectl wait``, which fails on a CRD whose status is still empty.
    """
    directory = crd_dir()
    files = [f"--filename={directory / f'argoproj.io_{n.removesuffix(_CRD_GROUP_SUFFIX)}.yaml'}"
             for n in names]  # fmt: skip
    run_kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts",
                "--field-manager=kloop-argo-bench", *files)  # fmt: skip
    deadline = time.monotonic() + 60
    pending = list(names)
    while pending := [n for n in pending if not _established(ext, n)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Argo CRDs not established within 60s: {pending}")
        time.sleep(0.2)


def _executor_rbac(namespace: str) -> list[dict[str, Any]]:
    """The executor's ServiceAccount, Role and binding (rights per Argo's workflow-rbac docs)."""
    name = EXECUTOR_SERVICE_ACCOUNT
    meta = {"name": name, "namespace": namespace}
    rules = [
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
         "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch", "patch"]},
    ]  # fmt: skip
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ]  # fmt: skip


def controller_configmap(namespace: str, executor_image: str, metrics_port: int) -> dict[str, Any]:
    """Without this ConfigMap the controller makes no pods; it names our argoexec image."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIGMAP, "namespace": namespace},
        "data": {
            "executor": f"image: {executor_image}\nimagePullPolicy: IfNotPresent\n",
            "metricsConfig": f"enabled: true\nport: {metrics_port}\nsecure: false\n",
        },
    }


def _apply(kubeconfig: Path, objects: list[dict[str, Any]]) -> None:
    items = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    run_kubectl(kubeconfig, "apply", "--server-side", "--field-manager=kloop-argo-bench",
                "-f", "-", stdin=items)  # fmt: skip


class ArgoController:
    """workflow-controller namespaced to ``namespace``, as a context manager.

    ``requeue_seconds`` sets ``DEFAULT_REQUEUE_TIME`` (None: Argo's default, 10 s; its source
    names 1 s as the floor). Inside the block: ``pid`` (sample /proc/<pid> for CPU and RSS),
    ``log_path``, ``metrics_port`` (Prometheus text on http://127.0.0.1:<port>/metrics) and
    ``executor_image``. On exit the process is stopped, the namespace deleted if this created it,
    and the CRDs removed if this installed them.
    """

    def __init__(
        self,
        namespace: str,
        requeue_seconds: float | None = None,
        kubeconfig: Path = ADMIN_KUBECONFIG,
        log_path: Path | None = None,
        remove_crds: bool = True,
    ) -> None:
        self.namespace = namespace
        self.requeue_seconds = requeue_seconds
        self.kubeconfig = kubeconfig
        self.log_path = log_path or (
            Path(tempfile.mkdtemp(prefix="kloop-argo-")) / "workflow-controller.log"
        )
        self.remove_crds = remove_crds
        self.identity = f"kloop-bench-{namespace}"
        self.metrics_port = free_port()
        self.executor_image = ""
        self.installed_crds: list[str] = []
        self.created_namespace = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = config.new_client_from_config(config_file=str(kubeconfig))

    @property
    def pid(self) -> int:
        """The controller's process id (the Go binary itself, not a shell)."""
        if self.proc is None:
            raise RuntimeError("workflow-controller is not running")
        return self.proc.pid

    def __enter__(self) -> ArgoController:
        try:
            self._start()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cleanup()

    def _ensure_namespace(self) -> None:
        core = client.CoreV1Api(self.api)
        try:
            core.read_namespace(self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            core.create_namespace(client.V1Namespace(metadata={"name": self.namespace}))
            self.created_namespace = True

    def _start(self) -> None:
        self.executor_image = ensure_argoexec_image()  # builds Argo first when not cached
        self._ensure_namespace()
        ext = client.ApiextensionsV1Api(self.api)
        missing = [n for n in _crd_names(crd_dir()) if n not in _argo_crds(ext)]
        self.installed_crds = missing  # before applying: a failed apply is cleaned up too
        if missing:
            install_crds(self.kubeconfig, ext, missing)
        _apply(
            self.kubeconfig,
            [
                controller_configmap(self.namespace, self.executor_image, self.metrics_port),
                *_executor_rbac(self.namespace),
            ],
        )
        env = {**os.environ, "LEADER_ELECTION_IDENTITY": self.identity}
        env.pop("DEFAULT_REQUEUE_TIME", None)
        if self.requeue_seconds is not None:
            env["DEFAULT_REQUEUE_TIME"] = f"{self.requeue_seconds:g}s"
        args = [
            str(binary("workflow-controller")),
            f"--kubeconfig={self.kubeconfig}",
            f"--namespace={self.namespace}",
            "--namespaced",
            f"--managed-namespace={self.namespace}",
            f"--configmap={CONFIGMAP}",
            f"--executor-image={self.executor_image}",
            "--executor-image-pull-policy=IfNotPresent",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        requeue = "default" if self.requeue_seconds is None else f"{self.requeue_seconds:g}s"
        progress(
            f"workflow-controller pid {self.proc.pid} in {self.namespace} (requeue {requeue}, "
            f"log {self.log_path})",
            tag="kloop-argo",
        )
        self._wait_leading(timeout=60)

    def _wait_leading(self, timeout: float) -> None:
        """Until the controller holds its Lease: from then on it processes workflows."""
        coordination = client.CoordinationV1Api(self.api)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"workflow-controller exited at once:\n{self.log_tail()}")
            try:
                lease = coordination.read_namespaced_lease(LEASE, self.namespace)
                if lease.spec.holder_identity == self.identity:
                    return
            except ApiException as e:
                if e.status != 404:
                    raise
            time.sleep(0.2)
        raise RuntimeError(
            f"workflow-controller did not lead within {timeout}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """The controller log's last lines, for failures."""
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds (it ignores SIGTERM)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_process(self.proc, grace=STOP_GRACE)
        how = {-15: "SIGTERM", -9: "SIGKILL"}.get(self.proc.returncode, str(self.proc.returncode))
        progress(f"workflow-controller pid {self.proc.pid} stopped ({how})", tag="kloop-argo")

    def _workflows_elsewhere(self) -> bool:
        """Whether another namespace has Workflows: another benchmark still needs the CRDs."""
        try:
            listed = client.CustomObjectsApi(self.api).list_cluster_custom_object(
                GROUP, VERSION, PLURAL
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return any(w["metadata"]["namespace"] != self.namespace for w in listed["items"])

    def _cleanup(self) -> None:
        self.stop()
        core = client.CoreV1Api(self.api)
        if self.created_namespace:
            try:
                core.delete_namespace(self.namespace)
            except ApiException as e:
                if e.status != 404:
                    raise
        if self.remove_crds and self.installed_crds and not self._workflows_elsewhere():
            ext = client.ApiextensionsV1Api(self.api)
            for name in self.installed_crds:
                try:
                    ext.delete_custom_resource_definition(name)
                except ApiException as e:
                    if e.status != 404:
                        raise
