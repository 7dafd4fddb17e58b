"""The pods' bridge: refused when another interface routes its network, and a MAC that stays.

Empty bridges on an unused range stand in for cni0 and podman's bridge, so the running
cluster's routes are never touched.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.cluster.local import bridge_mac, ensure_bridge, routes_elsewhere

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


def _mac(link: str) -> str:
    return Path("/sys/class/net", link, "address").read_text().strip()


def test_the_bridge_keeps_its_mac_while_ports_with_lower_macs_come_and_go() -> None:
    bridge, port = "kloop-t2", "kloop-tp"
    try:
        ensure_bridge(bridge, "10.253.0.1", CIDR)
        assert _mac(bridge) == bridge_mac(bridge)
        _ip("link", "add", port, "type", "veth", "peer", "name", f"{port}-peer")  # as a pod's
        _ip("link", "set", port, "address", "02:00:00:00:00:01")  # lower than bridge_mac(bridge)
        _ip("link", "set", port, "master", bridge)
        assert _mac(bridge) == bridge_mac(bridge), "a joining port must not lend its MAC"
        _ip("link", "del", port)
        assert _mac(bridge) == bridge_mac(bridge)
        ensure_bridge(bridge, "10.253.0.1", CIDR)  # idempotent on an existing bridge
        assert _mac(bridge) == bridge_mac(bridge)
    finally:
        subprocess.run(["ip", "link", "del", port], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
