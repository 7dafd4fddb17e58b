"""kopf wiring of ``--shard-label``: server-side watch selectors and the API user agent.

The selector goes to the apiserver with every list and watch of Loops, LoopRuns and kloop's pods,
so a replica serving shard ``a`` never receives an event of shard ``b`` (docs/scaling.md). Each
replica also names itself in its user agent, which the apiserver records as the field manager of
every object it writes: ``kubectl get looprun -o yaml --show-managed-fields`` tells who wrote what.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kloop.adapters.kube import Kube
from kloop.api import GROUP
from kloop.core import names
from kloop.core.shard import Shard, manager_name

log = logging.getLogger("kloop.shards")


def configure(settings: kopf.OperatorSettings, memo: Any) -> Shard | None:
    """Filter the watches by the memo's shard (``--shard-label``); None when unsharded."""
    shard: Shard | None = getattr(memo, "shard", None)
    if shard is None:
        return None
    settings.watching.label_selectors[GROUP, "loops"] = shard.selector
    settings.watching.label_selectors[GROUP, "loopruns"] = shard.selector
    settings.watching.label_selectors["v1", "pods"] = shard.pod_selector(names.LABEL_RUN)
    log.info("serving one shard", extra={"shard": shard.selector, "manager": manager_name(shard)})
    return shard


def identify(kube: Kube, shard: Shard | None) -> None:
    """Send ``kloop-operator[-shard-<slug>]/<version>`` as the user agent of this client."""
    kube.api_client.user_agent = f"{manager_name(shard)}/{_version()}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kloop")
    except PackageNotFoundError:
        return "dev"
