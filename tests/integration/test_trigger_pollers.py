"""Pollers start even when the apiserver fails while a Loop's webhook triggers are set up.

The Loop event handler may not be called again for a quiet Loop (and the Secret refresher only
redoes webhooks), so a poller skipped on one apiserver error would never start. The apiserver
here is a closed port on loopback: a real connection refused, no cluster needed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from e2e.procs import free_port
from kubernetes import client

from kloop.adapters.egress import EgressGuard
from kloop.adapters.kube import Kube
from kloop.triggers import Triggers

pytestmark = pytest.mark.integration


def _unreachable_kube() -> Kube:
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{free_port()}"
    config.retries = 0
    return Kube(client.ApiClient(config))


def test_a_git_trigger_is_polled_even_when_reading_a_webhook_secret_fails() -> None:
    loop: dict[str, Any] = {
        "apiVersion": "kloop.dev/v1alpha1",
        "kind": "Loop",
        "metadata": {"name": "app", "namespace": "ns", "uid": "u"},
        "spec": {
            "triggers": [
                {"name": "hook", "webhook": {"provider": "github", "secretRef": {"name": "s"}}},
                {"name": "poll", "git": {"url": "http://127.0.0.1:9/app.git", "interval": "1h"}},
            ]
        },
    }

    async def main() -> None:
        triggers = Triggers(_unreachable_kube(), EgressGuard(), webhook_port=0)
        try:
            with pytest.raises(Exception):  # noqa: B017, PT011 - whatever urllib3 raises
                await triggers.observe(loop)
            poller = triggers.pollers.get(("ns", "app", "poll"))
            assert poller is not None and not poller.task.done()
        finally:
            await triggers.stop()

    asyncio.run(main())
