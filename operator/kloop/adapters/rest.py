"""The handful of API calls kloop makes, as plain REST requests through the client's ApiClient.

The generated ``CoreV1Api`` and ``CustomObjectsApi`` classes are tens of thousands of lines: just
constructing them cost the operator about 20 MiB of RSS and half a second of CPU at start, for
the fifteen calls below. These classes keep the generated methods' names and positional
arguments (so call sites read the same), send JSON, and return the raw response unread, as
``Kube.call`` expects. Authentication, TLS and errors (``ApiException``) stay the client's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from kubernetes.client.rest import ApiException

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30.0
"""Seconds for one request (connect + read) unless the caller gives ``_request_timeout``."""


def request(
    api_client: Any,
    method: str,
    path: str,
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    content_type: str | None = None,
    _preload_content: bool = False,
    _request_timeout: float | tuple[float, float] | None = None,
) -> Any:
    """A raw API request with the client's auth; raises ApiException on a non-2xx answer.

    Returns the read response (``.data`` holds the body), as ``Kube.call`` expects.
    """
    headers = {"Accept": JSON}
    if body is not None:
        headers["Content-Type"] = content_type or JSON
    prepared = api_client.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(*prepared, _request_timeout=_request_timeout or REQUEST_TIMEOUT)
    response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response


def _q(part: str) -> str:
    return quote(part, safe="")


def _query(**params: str | None) -> list[tuple[str, str]]:
    return [(key, value) for key, value in params.items() if value is not None]


class CoreV1:
    """``/api/v1``: pods, ConfigMaps, Secrets, Events and ServiceAccount tokens."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return request(self.api_client, method, f"/api/v1/{path}", **kwargs)

    def list_namespaced_pod(
        self,
        namespace: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """GET pods, by label or field selector."""
        query = _query(labelSelector=label_selector, fieldSelector=field_selector)
        return self._call("GET", f"namespaces/{_q(namespace)}/pods", query=query, **kwargs)

    def create_namespaced_pod(
        self, namespace: str, body: Any, field_validation: str | None = None, **kwargs: Any
    ) -> Any:
        """POST a pod (``field_validation="Strict"`` refuses unknown fields)."""
        path = f"namespaces/{_q(namespace)}/pods"
        query = _query(fieldValidation=field_validation)
        return self._call("POST", path, query=query, body=body, **kwargs)

    def delete_namespaced_pod(self, name: str, namespace: str, body: Any = None, **kw: Any) -> Any:
        """DELETE a pod."""
        return self._call("DELETE", f"namespaces/{_q(namespace)}/pods/{_q(name)}", body=body, **kw)

    def read_namespaced_config_map(self, name: str, namespace: str, **kwargs: Any) -> Any:
        """GET a ConfigMap."""
        return self._call("GET", f"namespaces/{_q(namespace)}/configmaps/{_q(name)}", **kwargs)

    def create_namespaced_config_map(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        """POST a ConfigMap."""
        return self._call("POST", f"namespaces/{_q(namespace)}/configmaps", body=body, **kwargs)

    def replace_namespaced_config_map(
        self, name: str, namespace: str, body: Any, **kwargs: Any
    ) -> Any:
        """PUT a ConfigMap (guarded by the resourceVersion in ``body``, if any)."""
        path = f"namespaces/{_q(namespace)}/configmaps/{_q(name)}"
        return self._call("PUT", path, body=body, **kwargs)

    def delete_namespaced_config_map(
        self, name: str, namespace: str, body: Any = None, **kwargs: Any
    ) -> Any:
        """DELETE a ConfigMap."""
        path = f"namespaces/{_q(namespace)}/configmaps/{_q(name)}"
        return self._call("DELETE", path, body=body, **kwargs)

    def read_namespaced_secret(self, name: str, namespace: str, **kwargs: Any) -> Any:
        """GET a Secret."""
        return self._call("GET", f"namespaces/{_q(namespace)}/secrets/{_q(name)}", **kwargs)

    def list_namespaced_secret(
        self, namespace: str, label_selector: str | None = None, **kwargs: Any
    ) -> Any:
        """GET Secrets by label."""
        query = _query(labelSelector=label_selector)
        return self._call("GET", f"namespaces/{_q(namespace)}/secrets", query=query, **kwargs)

    def create_namespaced_secret(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        """POST a Secret."""
        return self._call("POST", f"namespaces/{_q(namespace)}/secrets", body=body, **kwargs)

    def delete_namespaced_secret(
        self, name: str, namespace: str, body: Any = None, **kwargs: Any
    ) -> Any:
        """DELETE a Secret (``body`` may carry a uid precondition)."""
        path = f"namespaces/{_q(namespace)}/secrets/{_q(name)}"
        return self._call("DELETE", path, body=body, **kwargs)

    def create_namespaced_event(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        """POST a core/v1 Event."""
        return self._call("POST", f"namespaces/{_q(namespace)}/events", body=body, **kwargs)

    def create_namespaced_service_account_token(
        self, name: str, namespace: str, body: Any, **kwargs: Any
    ) -> Any:
        """POST a TokenRequest for a ServiceAccount."""
        path = f"namespaces/{_q(namespace)}/serviceaccounts/{_q(name)}/token"
        return self._call("POST", path, body=body, **kwargs)


class CustomObjects:
    """``/apis/<group>/<version>``: kloop's own Loops and LoopRuns."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def _call(
        self, method: str, group: str, version: str, namespace: str, tail: str, **kwargs: Any
    ) -> Any:
        path = f"/apis/{_q(group)}/{_q(version)}/namespaces/{_q(namespace)}/{tail}"
        return request(self.api_client, method, path, **kwargs)

    def _merge_patch(
        self, group: str, version: str, namespace: str, tail: str, body: Any, **kwargs: Any
    ) -> Any:
        return self._call(
            "PATCH", group, version, namespace, tail, body=body, content_type=MERGE_PATCH, **kwargs
        )

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **kwargs: Any
    ) -> Any:
        """GET one object."""
        return self._call("GET", group, version, namespace, f"{_q(plural)}/{_q(name)}", **kwargs)

    def list_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        label_selector: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """GET the objects of a namespace."""
        query = _query(labelSelector=label_selector)
        return self._call("GET", group, version, namespace, _q(plural), query=query, **kwargs)

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: Any, **kwargs: Any
    ) -> Any:
        """POST an object."""
        return self._call("POST", group, version, namespace, _q(plural), body=body, **kwargs)

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        **kwargs: Any,
    ) -> Any:
        """PATCH an object with a JSON merge patch."""
        tail = f"{_q(plural)}/{_q(name)}"
        return self._merge_patch(group, version, namespace, tail, body, **kwargs)

    def patch_namespaced_custom_object_status(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        **kwargs: Any,
    ) -> Any:
        """PATCH the status subresource with a JSON merge patch."""
        tail = f"{_q(plural)}/{_q(name)}/status"
        return self._merge_patch(group, version, namespace, tail, body, **kwargs)

    def replace_namespaced_custom_object_status(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        **kwargs: Any,
    ) -> Any:
        """PUT the status subresource (guarded by the resourceVersion in ``body``)."""
        tail = f"{_q(plural)}/{_q(name)}/status"
        return self._call("PUT", group, version, namespace, tail, body=body, **kwargs)

    def delete_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        propagation_policy: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """DELETE an object (``propagation_policy``: Background, Foreground or Orphan)."""
        tail = f"{_q(plural)}/{_q(name)}"
        query = _query(propagationPolicy=propagation_policy)
        return self._call("DELETE", group, version, namespace, tail, query=query, **kwargs)
