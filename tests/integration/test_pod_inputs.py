"""A pod's inputs ConfigMap against a real apiserver, when one of that name is already there.

A run replaced under the same name (``kubectl replace --force``) asks for the same names as its
predecessor while the garbage collector is still removing the predecessor's objects: the
ConfigMap can exist when kloop creates it and be gone when it replaces it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from kloop.adapters.apply import INPUT_ATTEMPTS, InputsUnsettled, _write_inputs
from kloop.adapters.kube import Kube

pytestmark = pytest.mark.integration

NAME = "again-s0-local-i1-maker-in"


def inputs(text: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ConfigMap as kloop renders it (owned by its run), or as another writer left it."""
    meta: dict[str, Any] = {"name": NAME}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"maker.json": text}}


def an_owner(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    """A live object to own our inputs, so the garbage collector leaves them alone."""
    made = client.CoreV1Api(api_client).create_namespaced_config_map(
        namespace, {"metadata": {"name": "the-run"}}
    )
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": "the-run", "uid": made.metadata.uid}


class CollectedBeforeReplace(Kube):
    """A real client that deletes the ConfigMap just before each replace, as the GC may."""

    def __init__(self, api_client: client.ApiClient, namespace: str, times: int) -> None:
        super().__init__(api_client)
        self.namespace = namespace
        self.times = times

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") != "replace_namespaced_config_map" or not self.times:
            return await super().call(fn, *args, **kwargs)
        self.times -= 1
        await super().call(self.core.delete_namespaced_config_map, NAME, self.namespace)
        try:
            return await super().call(fn, *args, **kwargs)
        finally:
            if self.times:  # ... and the next create finds one again
                await super().call(
                    self.core.create_namespaced_config_map, self.namespace, inputs("stale")
                )


def read(api_client: client.ApiClient, namespace: str) -> dict[str, str]:
    return client.CoreV1Api(api_client).read_namespaced_config_map(NAME, namespace).data


def plant(api_client: client.ApiClient, namespace: str, text: str, **meta: Any) -> None:
    """A ConfigMap under the inputs' name, as another writer (or a deleted run) left it."""
    body = inputs(text)
    body["metadata"].update(meta)
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, body)


def write(kube: Kube, api_client: client.ApiClient, namespace: str) -> None:
    """Write this run's inputs, owned by a live object, as kloop does on the hub."""
    ours = inputs("this run's", an_owner(api_client, namespace))
    asyncio.run(_write_inputs(kube, namespace, ours))


def test_a_predecessors_inputs_collected_between_create_and_replace_are_written_anew(
    api_client: client.ApiClient, namespace: str
) -> None:
    plant(api_client, namespace, "the deleted run's")
    write(CollectedBeforeReplace(api_client, namespace, times=1), api_client, namespace)
    assert read(api_client, namespace) == {"maker.json": "this run's"}


def test_inputs_left_in_place_are_overwritten_with_what_kloop_decided(
    api_client: client.ApiClient, namespace: str
) -> None:
    plant(api_client, namespace, "forged")
    write(Kube(api_client), api_client, namespace)
    assert read(api_client, namespace) == {"maker.json": "this run's"}


def test_inputs_that_never_settle_give_up_for_this_pass_only(
    api_client: client.ApiClient, namespace: str
) -> None:
    plant(api_client, namespace, "stale")
    kube = CollectedBeforeReplace(api_client, namespace, times=INPUT_ATTEMPTS + 1)
    with pytest.raises(InputsUnsettled, match=NAME):
        write(kube, api_client, namespace)


def test_inputs_still_being_deleted_are_left_alone_until_they_are_gone(
    api_client: client.ApiClient, namespace: str
) -> None:
    """Replacing them would keep their uid: a collector that already chose it deletes ours."""
    core = client.CoreV1Api(api_client)
    plant(api_client, namespace, "the deleted run's", finalizers=["kloop.dev/test-hold"])
    core.delete_namespaced_config_map(NAME, namespace)
    ours = inputs("this run's", an_owner(api_client, namespace))
    try:
        with pytest.raises(InputsUnsettled, match="still being garbage-collected"):
            asyncio.run(_write_inputs(Kube(api_client), namespace, ours))
        assert read(api_client, namespace) == {"maker.json": "the deleted run's"}
    finally:  # else the namespace would never finish terminating
        core.patch_namespaced_config_map(NAME, namespace, {"metadata": {"finalizers": None}})
    asyncio.run(_write_inputs(Kube(api_client), namespace, ours))
    assert read(api_client, namespace) == {"maker.json": "this run's"}
