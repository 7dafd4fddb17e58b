"""Install the generated kloop CRDs into a cluster and wait until they are served."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from kubernetes import client

CRDS_DIR = Path(__file__).resolve().parent.parent / "crds"


def install_crds(api: client.ApiClient, timeout: float = 60) -> list[str]:
    """Create or update every CRD in crds/; return their names once Established."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        names.append(name)
        try:
            current = ext.read_custom_resource_definition(name)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(name, body)
        except client.ApiException as err:
            if err.status != 404:
                raise
            ext.create_custom_resource_definition(body)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = ext.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not established: {conditions}")
            time.sleep(0.2)
    return names
