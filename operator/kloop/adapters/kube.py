"""The Kubernetes client, used from asyncio through threads, speaking plain JSON dicts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from functools import partial
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kloop.adapters.rest import CoreV1, CustomObjects
from kloop.api import GROUP, VERSION

Json = dict[str, Any]


class Kube:
    """The few API calls kloop makes, each returning parsed JSON (not generated models)."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api_client = api_client or new_api_client()
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
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


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
