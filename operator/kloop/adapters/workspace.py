"""The workspace in a pod manifest: kloop's clone init container and push sidecar.

``/kloop/workspace`` is an emptyDir. ``kloop-workspace`` (an init container, the kit image) clones
the decided commit into it before the agent starts; for a maker with ``push: true``,
``kloop-push`` is a native sidecar (an init container with ``restartPolicy: Always``): Kubernetes
starts it before the agent and sends it SIGTERM only after the agent ended, and then it pushes the
branch — kloop pushes, not the agent. Both report in their termination messages
(``kloop.api.gitreport``). Credentials come from the Secret as environment variables of these two
containers only (never of the agent, never on a command line); ``kloop-agent workspace`` turns
them into a git ``http.extraHeader`` through ``GIT_CONFIG_*``.
"""

from __future__ import annotations

import os
from typing import Any

from kloop import __version__
from kloop.api.loop import GitWorkspace
from kloop.core.model import Checkout
from kloop.core.workspace import CLONE_CONTAINER, PUSH_CONTAINER

Json = dict[str, Any]

WORKSPACE_DIR = "/kloop/workspace"
VOLUME = "kloop-workspace"
KIT_IMAGE = os.environ.get("KLOOP_KIT_IMAGE") or f"ghcr.io/kloop-dev/kloop-kit:{__version__}"
"""The image of the clone and push containers: the agent kit (git and ``kloop-agent``)."""
DEFAULT_GRACE_SECONDS = 30
PUSH_MARGIN_SECONDS = 5
"""The push gives up this long before the pod's grace period ends, so it can still report."""
CREDENTIAL_KEYS = (("KLOOP_GIT_USERNAME", "username"), ("KLOOP_GIT_PASSWORD", "password"))
TOKEN_KEY = ("KLOOP_GIT_TOKEN", "token")
# the agent may run as another user than the kit's: git must accept the checkout as safe
AGENT_GIT_ENV = (
    ("GIT_CONFIG_COUNT", "1"),
    ("GIT_CONFIG_KEY_0", "safe.directory"),
    ("GIT_CONFIG_VALUE_0", WORKSPACE_DIR),
)


def _env(checkout: Checkout, git: GitWorkspace, push_timeout: int) -> list[Json]:
    plain = {
        "KLOOP_GIT_URL": git.url,
        "KLOOP_GIT_START": checkout.start,
        "KLOOP_BRANCH": checkout.branch,
        "KLOOP_WORKSPACE": WORKSPACE_DIR,
        "KLOOP_GIT_PUSH_TIMEOUT": str(push_timeout),
    }
    if checkout.commit:
        plain["KLOOP_GIT_COMMIT"] = checkout.commit
    if checkout.base:  # checkers: fetched too, so the agent's `git diff $KLOOP_BASE_COMMIT` works
        plain["KLOOP_GIT_BASE"] = checkout.base
    env: list[Json] = [{"name": k, "value": v} for k, v in plain.items()]
    if git.secret_ref is not None:
        for variable, key in (*CREDENTIAL_KEYS, TOKEN_KEY):
            ref = {"name": git.secret_ref.name, "key": key, "optional": True}
            env.append({"name": variable, "valueFrom": {"secretKeyRef": ref}})
    return env


def _container(name: str, command: str, env: list[Json], image: str) -> Json:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["kloop-agent", "workspace", command],
        "env": env,
        "volumeMounts": [{"name": VOLUME, "mountPath": WORKSPACE_DIR}],
        "terminationMessagePolicy": "File",
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
    }


def add_workspace(
    spec: Json, checkout: Checkout, git: GitWorkspace, image: str = KIT_IMAGE
) -> None:
    """Give the pod its checkout: the volume, the clone (and push) containers, the agent's mount.

    kloop's containers come first. With credentials, the pod never shares its process namespace:
    the agent could otherwise read them from the clone's or the push sidecar's environment.
    """
    if git.secret_ref is not None:
        spec["shareProcessNamespace"] = False
    grace = spec.get("terminationGracePeriodSeconds")
    grace = DEFAULT_GRACE_SECONDS if grace is None else int(grace)
    env = _env(checkout, git, max(grace - PUSH_MARGIN_SECONDS, 1))
    ours = [_container(CLONE_CONTAINER, "clone", env, image)]
    if checkout.push:
        sidecar = _container(PUSH_CONTAINER, "push", env, image)
        sidecar["restartPolicy"] = "Always"  # a native sidecar: stopped after the agent ends
        ours.append(sidecar)
    spec["initContainers"] = [*ours, *(spec.get("initContainers") or [])]
    spec["volumes"] = [*(spec.get("volumes") or []), {"name": VOLUME, "emptyDir": {}}]
    mount = {"name": VOLUME, "mountPath": WORKSPACE_DIR, "readOnly": checkout.read_only}
    for container in spec["containers"]:
        container["volumeMounts"] = [*(container.get("volumeMounts") or []), mount]
        own = {e.get("name") for e in container.get("env") or []}
        extra: list[Json] = []
        if checkout.base and "KLOOP_BASE_COMMIT" not in own:  # what the kit's checker diffs
            extra.append({"name": "KLOOP_BASE_COMMIT", "value": checkout.base})
        if "GIT_CONFIG_COUNT" not in own:  # the template's git configuration wins
            extra += [{"name": k, "value": v} for k, v in AGENT_GIT_ENV]
        if extra:
            container["env"] = [*(container.get("env") or []), *extra]
