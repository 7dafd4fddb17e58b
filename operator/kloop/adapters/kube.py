"""The Kubernetes client, used from asyncio through threads, speaking plain JSON dicts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from functools import partial, wraps
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kloop.adapters.rest import CoreV1, CustomObjects
from kloop.api import GROUP, VERSION
from kloop.metrics import API_REQUESTS

Json = dict[str, Any]
HTTP_CONNECTIONS = 32
"""Kept-alive connections to the apiserver: as many as API calls in flight (handlers.py)."""


class Kube:
    """The few API calls kloop makes, each returning parsed JSON (not generated models)."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api_client = count_requests(api_client or new_api_client())
        self.core = CoreV1(self.api_client)
        self.custom = CustomObjects(self.api_client)

    async def patch_status(self, namespace: str, plural: str, name: str, patch: Json) -> Json:
        """Merge-patch the status subresource of a kloop object; the object as stored."""
        stored: Json = await self.call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            patch,
        )
        return stored

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking client call in a thread; return parsed JSON when it has a body."""
        response = await asyncio.to_thread(partial(fn, *args, _preload_content=False, **kwargs))
        data = response.data
        return json.loads(data) if data else None


def new_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = HTTP_CONNECTIONS
    return client.ApiClient(configuration)


def request_kind(method: str, url: str) -> tuple[str, str]:
    """The apiserver's verb and resource of a REST call, e.g. ("list", "pods").

    Verbs as the apiserver names them (get/list/watch/create/update/patch/delete/
    deletecollection); the resource is the plural with its subresource ("loopruns/status"), or
    "" for non-resource paths (/version, /openapi). Bounded: never a name or a namespace.
    """
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    # /api/v1/... or /apis/GROUP/VERSION/...: skip the prefix, then namespaces/NS when present
    if path[:1] == ["api"]:
        rest = path[2:]
    elif path[:1] == ["apis"]:
        rest = path[3:]
    else:
        return method.lower(), ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        rest = rest[2:]  # namespaces/NS/<resource>...; "namespaces/NS" itself is a namespace
    resource = rest[0] if rest else ""
    named = len(rest) >= 2
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    query = parse_qs(parts.query)
    method = method.upper()
    if method == "GET":
        if query.get("watch", [""])[0].lower() in ("true", "1"):
            verb = "watch"
        else:
            verb = "get" if named else "list"
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    return verb, resource


def count_requests(api: client.ApiClient) -> client.ApiClient:
    """Count every REST call ``api`` makes in ``kloop_api_requests_total`` (once per client).

    Wraps ``call_api``, the one method every generated API call goes through, so no call site
    can forget it. kopf's own watches use its own HTTP session and are not counted here.
    """
    if getattr(api, "_kloop_counted", False):
        return api
    send = api.call_api

    @wraps(send)
    def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        API_REQUESTS.labels(*request_kind(method, url)).inc()
        return send(method, url, *args, **kwargs)

    api.call_api = counted
    api._kloop_counted = True
    return api


def is_status(err: BaseException, *codes: int) -> bool:
    """Whether ``err`` is an API error with one of these HTTP status codes."""
    return isinstance(err, ApiException) and err.status in codes


def is_permanent(err: BaseException) -> bool:
    """An apiserver refusal that retrying will not change: a 4xx but 409 (re-read) and 429."""
    if not isinstance(err, ApiException) or err.status is None:
        return False
    return 400 <= err.status < 500 and err.status not in (409, 429)


def api_message(err: BaseException) -> str:
    """The apiserver's own words from an ApiException (its JSON body), else the error."""
    body = getattr(err, "body", None)
    try:
        return str(json.loads(body)["message"]) if body else str(err)
    except (ValueError, KeyError, TypeError):
        return str(err)


def owner_reference(obj: Json, controller: bool = True) -> Json:
    """An ownerReference to ``obj`` so garbage collection removes children with their owner."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }
