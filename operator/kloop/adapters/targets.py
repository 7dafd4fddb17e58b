"""The kubeconfig Secret of an agent pod acting on a remote cluster: write it, delete it after.

One Secret per pod, ``<pod>-target`` in the run's namespace, owned by the LoopRun (so it goes
with the run at the latest), written just before the pod and deleted as soon as the pod ends or
is stopped. The pod carries the Secret's uid in an annotation: a restarted operator deletes the
Secrets of ended pods by name with that uid as a precondition, so it needs neither ``get`` nor
``list`` on Secrets, and never deletes a Secret it did not write.
"""

from __future__ import annotations

import logging
from typing import Any

from kloop.adapters.kube import Kube, is_status
from kloop.core import names
from kloop.core.model import LOCAL_CLUSTER

log = logging.getLogger("kloop.targets")

Json = dict[str, Any]
LABEL_CREDENTIALS = "kloop.dev/credentials"
_ENDED = ("Succeeded", "Failed")


def render_target_secret(pod: str, run: Json, owner: Json, cluster: str, kubeconfig: str) -> Json:
    """The Secret mounted at /kloop/target in the pod."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.target_secret_name(pod),
            "namespace": run["metadata"]["namespace"],
            "labels": {names.LABEL_RUN: run["metadata"]["name"], LABEL_CREDENTIALS: "target"},
            "annotations": {"kloop.dev/target-cluster": cluster},
            "ownerReferences": [owner],
        },
        "stringData": {"kubeconfig": kubeconfig},
    }


async def write_target_secret(kube: Kube, body: Json) -> str:
    """Create the Secret, replacing one of that name (an earlier attempt's, or planted); its uid.

    Delete-then-create rather than update: the operator needs no verb that could change a
    Secret it did not write in place.
    """
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        created = await kube.call(kube.core.create_namespaced_secret, namespace, body)
    except Exception as err:
        if not is_status(err, 409):
            raise
        await delete_target_secret(kube, namespace, name, None)
        created = await kube.call(kube.core.create_namespaced_secret, namespace, body)
    return str(created["metadata"]["uid"])


async def delete_target_secret(kube: Kube, namespace: str, name: str, uid: str | None) -> None:
    """Delete it (only the one with ``uid`` when given); gone or replaced counts as done."""
    options: Json = {"preconditions": {"uid": uid}} if uid else {}
    try:
        await kube.call(kube.core.delete_namespaced_secret, name, namespace, body=options)
        log.info("target kubeconfig deleted", extra={"secret": name})
    except Exception as err:
        if not is_status(err, 404, 409):  # 409: the uid precondition failed (not ours)
            raise


def is_remote(pod: Json) -> bool:
    """A pod of a remote target: it mounts a minted kubeconfig."""
    cluster = (pod["metadata"].get("labels") or {}).get(names.LABEL_CLUSTER)
    return cluster not in (None, LOCAL_CLUSTER)


def ended_remote_pods(pods: list[Json]) -> dict[str, str | None]:
    """Remote pods that ended or are being deleted -> the uid of their kubeconfig Secret."""
    return {
        p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(
            names.ANNOTATION_TARGET_SECRET_UID
        )
        for p in pods
        if is_remote(p)
        and (
            (p.get("status") or {}).get("phase") in _ENDED
            or p["metadata"].get("deletionTimestamp") is not None
        )
    }


def token_expiry(pods: list[Json]) -> dict[str, str]:
    """Per cluster, the latest expiry recorded on its pods (what survives an operator restart)."""
    latest: dict[str, str] = {}
    for pod in pods:
        meta = pod["metadata"]
        expires = (meta.get("annotations") or {}).get(names.ANNOTATION_TOKEN_EXPIRES_AT)
        cluster = (meta.get("labels") or {}).get(names.LABEL_CLUSTER)
        if expires and cluster and is_remote(pod) and expires > latest.get(cluster, ""):
            latest[cluster] = expires
    return latest
