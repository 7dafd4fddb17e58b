"""The cluster as ``kubectl kloop`` sees it: kubeconfig, namespace, and the few calls it makes.

Synchronous on purpose (one command, one user, no event loop), speaking plain JSON like the
operator's adapters. Every apiserver or connection error becomes a :class:`CliError` with its
exit code, so commands never show a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kloop.api import GROUP, VERSION
from kloop.cli.exits import CliError, Conflict, ExitCode

Json = dict[str, Any]

FIELD_MANAGER = "kubectl-kloop"
# connect, read: a cluster that does not answer fails fast instead of hanging the terminal
REQUEST_TIMEOUT = (5, 30)
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Target:
    """Where to talk to: kubectl's own flags (``--kubeconfig``, ``--context``, ``-n``)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


def _connect(target: Target) -> tuple[client.ApiClient, str]:
    """An API client and the namespace: the flag, else the context's, else ``default``.

    Without ``--kubeconfig``, ``$KUBECONFIG`` (a list of files, merged as kubectl does) or
    ``~/.kube/config``; inside a pod with neither, the pod's ServiceAccount.
    """
    cfg = client.Configuration()
    path = target.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    has_file = any(Path(p).expanduser().exists() for p in path.split(os.pathsep) if p)
    try:
        if has_file or target.kubeconfig or target.context:
            contexts, active = config.list_kube_config_contexts(config_file=path)
            chosen = active
            if target.context:
                chosen = next((c for c in contexts if c["name"] == target.context), None)
                if chosen is None:
                    raise CliError(
                        f'context "{target.context}" not found in the kubeconfig',
                        ExitCode.UNREACHABLE,
                    )
            config.load_kube_config(
                config_file=path, context=target.context, client_configuration=cfg
            )
            namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
        else:
            config.load_incluster_config(client_configuration=cfg)
            namespace = SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.exists() else "default"
    except (config.ConfigException, OSError, ValueError) as err:
        raise CliError(f"no usable kubeconfig ({path}): {err}", ExitCode.UNREACHABLE) from err
    cfg.retries = 0
    return client.ApiClient(cfg), target.namespace or namespace


def api_message(err: ApiException) -> str:
    """The apiserver's own words (its Status JSON), else the HTTP reason."""
    try:
        return str(json.loads(err.body)["message"])
    except (ValueError, KeyError, TypeError):
        return f"{err.status} {err.reason}"


class Cluster:
    """One namespace of one cluster, with the calls the commands need (JSON in, JSON out)."""

    def __init__(self, target: Target) -> None:
        self.api, self.namespace = _connect(target)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.server = str(self.api.configuration.host)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One request; the response body parsed as JSON. ``what`` names the object for a 404."""
        data = self._request(what, fn, *args, **kwargs)
        return json.loads(data) if data else None

    def _request(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
        """One request; the raw response body."""
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        try:
            response = fn(*args, _preload_content=False, **kwargs)
        except ApiException as err:
            raise self._api_error(what, err) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise CliError(
                f"cannot reach the cluster at {self.server}: {_root_cause(err)}",
                ExitCode.UNREACHABLE,
            ) from err
        return bytes(response.data or b"")

    def _api_error(self, what: str, err: ApiException) -> CliError:
        message = api_message(err)
        if err.status == 404:
            return CliError(f'{what} not found in namespace "{self.namespace}"', ExitCode.NOT_FOUND)
        if err.status == 403:
            return CliError(f"forbidden: {message}", ExitCode.FORBIDDEN)
        if err.status == 409:
            return Conflict(f"{what} changed meanwhile: {message}")
        if err.status == 401:
            return CliError(
                f"the cluster at {self.server} refused the credentials: {message}",
                ExitCode.UNREACHABLE,
            )
        return CliError(message)

    # -- kloop objects -------------------------------------------------------------------

    def get(self, plural: str, name: str) -> Json:
        """One Loop or LoopRun (``plural``: loops, loopruns)."""
        kind = "Loop" if plural == "loops" else "LoopRun"
        found: Json = self._call(
            f'{kind} "{name}"',
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            plural,
            name,
        )
        return found

    def list_all(self, plural: str, label_selector: str = "") -> list[Json]:
        """Every Loop or LoopRun of the namespace."""
        listed = self._call(
            f"the resource {plural}.{GROUP} (are kloop's CRDs installed?)",
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            plural,
            label_selector=label_selector,
        )
        items: list[Json] = listed["items"]
        return items

    def create_run(self, body: Json) -> Json:
        """Create a LoopRun."""
        created: Json = self._call(
            f"the resource loopruns.{GROUP} (are kloop's CRDs installed?)",
            self.custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            "loopruns",
            body,
            field_manager=FIELD_MANAGER,
        )
        return created

    def annotate_run(
        self, name: str, annotations: dict[str, str], resource_version: str | None = None
    ) -> Json:
        """Merge ``annotations`` into a LoopRun's (admission policies judge this request).

        With ``resource_version`` the patch applies only to that version of the run (else
        Conflict), so two people extending the same comma list never lose one another's entry.
        """
        metadata: Json = {"annotations": annotations}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        patched: Json = self._call(
            f'LoopRun "{name}"',
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            "loopruns",
            name,
            {"metadata": metadata},
            field_manager=FIELD_MANAGER,
        )
        return patched

    # -- core objects ----------------------------------------------------------------------

    def config_map(self, name: str) -> Json | None:
        """A ConfigMap, or None when it does not exist."""
        try:
            found: Json = self._call(
                f'ConfigMap "{name}"', self.core.read_namespaced_config_map, name, self.namespace
            )
        except CliError as err:
            if err.code is ExitCode.NOT_FOUND:
                return None
            raise
        return found

    def pods(self, label_selector: str) -> list[Json]:
        """Pods matching a label selector."""
        listed = self._call(
            "pods",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=label_selector,
        )
        items: list[Json] = listed["items"]
        return items

    def pod_log(self, pod: str, container: str) -> str:
        """A container's log (empty when it has not started)."""
        data = self._request(
            f'pod "{pod}"',
            self.core.read_namespaced_pod_log,
            pod,
            self.namespace,
            container=container,
            _request_timeout=(REQUEST_TIMEOUT[0], 120),
        )
        return data.decode(errors="replace")

    def whoami(self) -> str:
        """The authenticated username, as the apiserver (and so admission) sees it.

        A SelfSubjectReview, what ``kubectl auth whoami`` sends.
        """
        review = self._call(
            "SelfSubjectReview",
            client.AuthenticationV1Api(self.api).create_self_subject_review,
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        return str(review["status"]["userInfo"]["username"])


def _root_cause(err: BaseException) -> str:
    """The innermost reason of a connection error (``Connection refused``, not urllib3's wrap)."""
    reason = getattr(err, "reason", None)
    while isinstance(reason, BaseException) and getattr(reason, "reason", None) is not None:
        reason = getattr(reason, "reason", None)
    if isinstance(reason, BaseException):
        text = str(reason)
        # drop urllib3's "<HTTPSConnection object at 0x…>: " before "Failed to establish …"
        return text.split(": ", 1)[-1] if "Failed to establish" in text else text
    return str(err)
