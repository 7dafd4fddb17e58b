"""The harness refuses a pod network another interface already routes (podman's cni-podman0).

Two empty bridges on an unused range stand in for cni0 and podman's bridge, so the running
cluster's routes are never touched.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from e2e.cluster.local import routes_elsewhere

pytestmark = pytest.mark.integration

CIDR = "10.253.0.0/16"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_links() -> Iterator[tuple[str, str]]:
    names = ("kloop-t0", "kloop-t1")
    try:
        for name, address in zip(names, ("10.253.0.1/16", "10.253.0.2/16"), strict=True):
            _ip("link", "add", name, "type", "bridge")
            _ip("addr", "add", address, "dev", name)
            _ip("link", "set", name, "up")
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_a_second_interface_routing_the_pod_network_is_reported(
    two_links: tuple[str, str],
) -> None:
    ours, theirs = two_links
    assert routes_elsewhere(CIDR, ours) == [theirs]


def test_the_bridge_alone_is_not_a_conflict(two_links: tuple[str, str]) -> None:
    ours, theirs = two_links
    _ip("link", "del", theirs)
    assert routes_elsewhere(CIDR, ours) == []
