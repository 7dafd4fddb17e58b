"""The apiserver tier is real: CRDs are served, status is a subresource, prefixes isolate."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import wait_for
from kubernetes import client, config
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.integration

GROUP = "harness.kloop.dev"


def _widget_crd(plural: str) -> client.V1CustomResourceDefinition:
    schema = client.V1JSONSchemaProps(
        type="object",
        properties={
            "spec": client.V1JSONSchemaProps(
                type="object", properties={"size": client.V1JSONSchemaProps(type="integer")}
            ),
            "status": client.V1JSONSchemaProps(
                type="object", properties={"seen": client.V1JSONSchemaProps(type="integer")}
            ),
        },
    )
    return client.V1CustomResourceDefinition(
        metadata=client.V1ObjectMeta(name=f"{plural}.{GROUP}"),
        spec=client.V1CustomResourceDefinitionSpec(
            group=GROUP,
            scope="Namespaced",
            names=client.V1CustomResourceDefinitionNames(
                plural=plural, singular=plural[:-1], kind=plural.capitalize()[:-1]
            ),
            versions=[
                client.V1CustomResourceDefinitionVersion(
                    name="v1",
                    served=True,
                    storage=True,
                    schema=client.V1CustomResourceValidation(open_apiv3_schema=schema),
                    subresources=client.V1CustomResourceSubresources(status={}),
                )
            ],
        ),
    )


def _established(ext: client.ApiextensionsV1Api, name: str) -> bool:
    crd = ext.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def test_crd_is_served_and_status_round_trips_through_the_subresource(
    api_client: client.ApiClient, namespace: str
) -> None:
    plural = f"widgets{uuid.uuid4().hex[:6]}s"
    ext = client.ApiextensionsV1Api(api_client)
    ext.create_custom_resource_definition(_widget_crd(plural))
    try:
        wait_for("CRD established", lambda: _established(ext, f"{plural}.{GROUP}"), timeout=30)
        custom = client.CustomObjectsApi(api_client)
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/v1",
            "kind": plural.capitalize()[:-1],
            "metadata": {"name": "w1"},
            "spec": {"size": 3},
            "status": {"seen": 99},
        }
        created = wait_for(
            "CRD served",
            lambda: _try_create(custom, namespace, plural, body),
            timeout=30,
        )
        assert "seen" not in created.get("status", {}), "status on create must be ignored"
        custom.patch_namespaced_custom_object_status(
            GROUP, "v1", namespace, plural, "w1", {"status": {"seen": 3}}
        )
        custom.patch_namespaced_custom_object(
            GROUP, "v1", namespace, plural, "w1", {"status": {"seen": 1000}, "spec": {"size": 4}}
        )
        got = custom.get_namespaced_custom_object(GROUP, "v1", namespace, plural, "w1")
        assert got["spec"]["size"] == 4
        assert got["status"]["seen"] == 3, "a main-resource patch must not change status"
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{GROUP}")


def _try_create(
    custom: client.CustomObjectsApi, namespace: str, plural: str, body: dict[str, Any]
) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = custom.create_namespaced_custom_object(
            GROUP, "v1", namespace, plural, body
        )
        return result
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def test_two_apiservers_on_one_etcd_do_not_see_each_others_objects(
    cluster: Path, extra_cluster: Path
) -> None:
    a = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster)))
    b = client.CoreV1Api(config.new_client_from_config(config_file=str(extra_cluster)))
    name = f"only-in-b-{uuid.uuid4().hex[:6]}"
    b.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        assert b.read_namespace(name).metadata.name == name
        with pytest.raises(ApiException) as missing:
            a.read_namespace(name)
        assert missing.value.status == 404
        a_names = {ns.metadata.name for ns in a.list_namespace().items}
        assert name not in a_names
    finally:
        b.delete_namespace(name)
