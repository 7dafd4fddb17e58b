"""Issue 14, defect 1: the egress policy, redaction and capped reads, without a network."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
from collections.abc import AsyncIterator

import httpx
import pytest

from kloop.adapters.egress import Refused, _read_capped
from kloop.api.looprun import Phase
from kloop.core.egress import (
    parse_cidr,
    pick_address,
    redact_url,
    refusal,
    same_origin,
    scrub,
    secrets_in,
)
from kloop.core.model import OracleOutcome
from kloop.core.oracle import OracleError, clip, passes
from tests.unit.builders import Simulation, loop_spec, maker_ok, maker_pod

pytestmark = pytest.mark.unit

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("febf:ffff::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
    ],
)
def test_trust_1_refuses_loopback_link_local_and_unspecified(address: str, kind: str) -> None:
    why = refusal(ip(address))
    assert why is not None and kind in why and "--allow-egress-cidr" in why


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "192.168.1.5", "8.8.8.8", "2001:db8::1", "fec0::1"]
)
def test_trust_1_other_addresses_are_allowed(address: str) -> None:
    assert refusal(ip(address)) is None


def test_trust_1_an_allowed_cidr_wins_over_the_refused_ranges() -> None:
    allowed = [parse_cidr("127.0.0.0/8")]
    assert refusal(ip("127.0.0.1"), allowed) is None
    assert refusal(ip("::ffff:127.0.0.1"), allowed) is None
    assert refusal(ip("::1"), allowed) is not None, "IPv4 ranges do not allow IPv6 loopback"
    assert refusal(ip("169.254.169.254"), allowed) is not None


def test_trust_1_parse_cidr_accepts_addresses_and_rejects_garbage() -> None:
    assert str(parse_cidr("127.0.0.1")) == "127.0.0.1/32"
    assert str(parse_cidr(" 10.1.2.3/8 ")) == "10.0.0.0/8"
    with pytest.raises(ValueError, match="not a CIDR"):
        parse_cidr("localhost")


def test_trust_1_pick_address_never_returns_a_refused_one() -> None:
    chosen, refused = pick_address([ip("169.254.169.254"), ip("10.0.0.5")])
    assert chosen == ip("10.0.0.5") and len(refused) == 1
    chosen, refused = pick_address([ip("127.0.0.1"), ip("::1")])
    assert chosen is None and len(refused) == 2


@pytest.mark.parametrize(
    ("target", "same"),
    [
        ("http://127.0.0.1:8080/other?x=1", True),
        ("http://127.0.0.1:8080", True),
        ("http://127.0.0.2:8080/q", False),
        ("http://localhost:8080/q", False),
        ("http://127.0.0.1:9090/q", False),
        ("https://127.0.0.1:8080/q", False),
        ("http://127.0.0.1:notaport/q", False),
    ],
)
def test_trust_1_redirects_are_followed_only_to_the_same_origin(target: str, same: bool) -> None:
    assert same_origin("http://127.0.0.1:8080/q", target) is same


def test_trust_1_default_ports_are_the_same_origin() -> None:
    assert same_origin("https://prom.example/q", "https://PROM.example:443/r")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:hunter2@prom/q?query=up", "https://REDACTED@prom/q?query=up"),
        (
            "http://m/q?api_key=abc123&x=1&access_token=t0k3n&sig=ff&Password=p4ss#frag",
            "http://m/q?api_key=REDACTED&x=1&access_token=REDACTED&sig=REDACTED&Password=REDACTED",
        ),
        ("http://m/q?signature=&query=rate", "http://m/q?signature=&query=rate"),
        ("http://m:9090/api/v1/query", "http://m:9090/api/v1/query"),
    ],
)
def test_trust_1_urls_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_trust_1_scrub_masks_every_credential_of_the_url_in_a_message() -> None:
    url = "http://admin:s3cr%40t@m/q?token=abc%2Fdef&q=up"
    assert set(secrets_in(url)) >= {"admin", "s3cr%40t", "s3cr@t", "abc%2Fdef", "abc/def"}
    message = "failed for admin with s3cr@t and token abc/def on http://admin:s3cr%40t@m/"
    scrubbed = scrub(message, url)
    for secret in ("admin", "s3cr", "abc"):
        assert secret not in scrubbed
    assert "REDACTED" in scrubbed


def test_trust_1_values_echoed_into_reasons_are_clipped() -> None:
    assert clip("x" * 5000) == "x" * 199 + "…"
    assert clip("short") == "short"
    with pytest.raises(OracleError) as err:
        passes("y" * 100_000, "< 3")
    assert len(str(err.value)) < 300


class _Chunks(httpx.AsyncByteStream):
    """An answer arriving in 64 KiB pieces, as from a socket."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.body), 65536):
            yield self.body[i : i + 65536]


def _capped(body: bytes, max_bytes: int, **headers: str) -> bytes:
    response = httpx.Response(200, headers=headers, stream=_Chunks(body))
    return asyncio.run(_read_capped(response, max_bytes))


def test_trust_1_body_cap_applies_to_plain_and_compressed_answers() -> None:
    assert _capped(b"x" * 1000, 1000) == b"x" * 1000
    with pytest.raises(Refused, match="larger than 1000 bytes"):
        _capped(b"x" * 1001, 1000)
    bomb = gzip.compress(b"0" * 50_000_000)  # ~50 KB that expand to 50 MB
    with pytest.raises(Refused, match="larger than 1048576 bytes"):
        _capped(bomb, 1024 * 1024, **{"Content-Encoding": "gzip"})
    assert _capped(gzip.compress(b'{"v": 1}'), 1000, **{"Content-Encoding": "gzip"}) == b'{"v": 1}'
    with pytest.raises(Refused, match="Content-Encoding"):
        _capped(b"x", 1000, **{"Content-Encoding": "br"})


def test_trust_1_a_refused_oracle_fails_the_run_with_its_reason() -> None:
    spec = loop_spec(
        checkers=[
            {
                "name": "rate",
                "kind": "http",
                "http": {"url": "http://169.254.169.254/q", "jsonPath": "$.v", "passIf": "< 1"},
            }
        ]
    )
    sim = Simulation(spec)
    sim.step()
    sim.finish(maker_pod(1), maker_ok())
    why = "oracle http://169.254.169.254/q: 169.254.169.254 is a link-local address"
    sim.kwargs["oracles"] = {(1, "rate"): OracleOutcome("error", [why], None, "OracleRefused")}
    d = sim.step()
    assert d.status.phase is Phase.FAILED
    assert d.status.halt_reason == "OracleRefused"
    assert why in (d.status.message or "")


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("fd00:ec2::254", "fd00:ec2::254"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("::127.0.0.1", "127.0.0.1"),
    ],
)
def test_trust_1_metadata_and_loopback_in_other_ipv6_forms_are_refused(
    address: str, carried: str
) -> None:
    import ipaddress

    from kloop.core.egress import refusal

    why = refusal(ipaddress.ip_address(address))
    assert why is not None and why.startswith(carried)
