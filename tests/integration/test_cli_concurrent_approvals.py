"""Two approvals of one run at the same moment: the CLI's patch is bound to the version it read."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from kloop.api import GROUP, VERSION
from kloop.cli import actions
from kloop.cli.client import Cluster, Target
from kloop.cli.commands import _annotate_fresh
from kloop.cli.exits import Conflict
from kloop.core import names

pytestmark = pytest.mark.integration


def test_an_approval_made_meanwhile_is_kept_not_overwritten(
    cluster: Path, kloop_crds: list[str], namespace: str, api_client: client.ApiClient
) -> None:
    run = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoopRun",
        "metadata": {"name": "gated", "namespace": namespace},
        "spec": {"loopRef": {"name": "absent"}},
    }
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "loopruns", run
    )
    cli = Cluster(Target(kubeconfig=str(cluster), namespace=namespace))
    stale = cli.get("loopruns", "gated")
    cli.annotate_run("gated", actions.approval(stale, "canary", "alice"))  # alice, meanwhile

    with pytest.raises(Conflict):  # bob's patch, bound to what he read, is refused ...
        cli.annotate_run(
            "gated",
            actions.approval(stale, "prod", "bob"),
            stale["metadata"]["resourceVersion"],
        )
    # ... and the command re-reads and extends the list instead of replacing it
    _annotate_fresh(cli, "gated", stale, lambda r: actions.approval(r, "prod", "bob"))
    annotations = cli.get("loopruns", "gated")["metadata"]["annotations"]
    assert annotations[names.ANNOTATION_APPROVE] == "canary,prod"
