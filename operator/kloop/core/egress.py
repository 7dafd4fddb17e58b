"""The pure half of the egress guard: which addresses the operator may reach, and redaction.

Every request the operator makes on a Loop author's behalf (HTTP oracles today) goes through
the guard in ``kloop.adapters.egress``; this module holds the decisions it makes, so they are
tested without a network. Addresses are checked after DNS resolution, so a name pointing at
a metadata endpoint is refused like the literal address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What an author must never reach through the operator unless an operator flag allows it:
# the operator's own host (loopback), cloud metadata endpoints (link-local) and the
# unspecified address (which Linux routes to the local host).
REFUSED: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
    (ipaddress.IPv6Network("::1/128"), "loopback"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local"),
    (ipaddress.IPv6Network("fe80::/10"), "link-local"),
    (ipaddress.IPv4Network("0.0.0.0/8"), "unspecified"),
    (ipaddress.IPv6Network("::/128"), "unspecified"),
    # AWS's instance metadata service over IPv6 is a unique-local address, not link-local
    (ipaddress.IPv6Network("fd00:ec2::254/128"), "cloud metadata"),
)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

REDACTED = "REDACTED"
# query parameter names that usually carry a credential (matched anywhere in the name)
_SECRET_PARAM = re.compile(
    r"token|key|pass|pwd|secret|sig|auth|credential|session|cookie|jwt|bearer", re.IGNORECASE
)


def parse_cidr(value: str) -> IPNetwork:
    """A CIDR from the command line (``10.0.0.0/8``, ``127.0.0.1``, ``::1/128``)."""
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as err:
        raise ValueError(f"not a CIDR: {value!r}") from err


def _plain(address: IPAddress) -> IPAddress:
    """An IPv6 address that carries an IPv4 one is judged as that IPv4 address.

    IPv4-mapped (``::ffff:127.0.0.1``), NAT64 (``64:ff9b::a9fe:a9fe`` is 169.254.169.254
    through a NAT64 gateway) and the deprecated IPv4-compatible form (``::127.0.0.1``).
    """
    if not isinstance(address, ipaddress.IPv6Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def refusal(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why the operator must not connect to ``address``; None when it may.

    An allowed CIDR wins over the refused ranges (the operator's flag is the administrator's
    explicit choice, e.g. ``127.0.0.0/8`` for a test suite's local servers).
    """
    address = _plain(address)
    if any(address.version == net.version and address in net for net in allowed):
        return None
    for net, kind in REFUSED:
        if address.version == net.version and address in net:
            return f"{address} is a {kind} address ({net}), refused unless --allow-egress-cidr"
    return None


def pick_address(
    addresses: Iterable[IPAddress], allowed: Iterable[IPNetwork] = ()
) -> tuple[IPAddress | None, list[str]]:
    """The first resolved address the operator may use, and why the others were refused."""
    allowed = tuple(allowed)
    refused: list[str] = []
    for address in addresses:
        why = refusal(address, allowed)
        if why is None:
            return address, refused
        refused.append(why)
    return None, refused


def same_origin(url: str, target: str) -> bool:
    """Whether a redirect from ``url`` to ``target`` stays on the same scheme, host and port."""
    a, b = urlsplit(url), urlsplit(target)
    try:
        return (a.scheme, (a.hostname or "").lower(), a.port or _default_port(a.scheme)) == (
            b.scheme,
            (b.hostname or "").lower(),
            b.port or _default_port(b.scheme),
        )
    except ValueError:  # a malformed port
        return False


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def secrets_in(url: str) -> list[str]:
    """The credentials a URL carries: userinfo and the values of secret-looking parameters."""
    parts = urlsplit(url)
    found = []
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if userinfo:
        found += [userinfo, *userinfo.split(":", 1)]
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if value and _SECRET_PARAM.search(name):
            found.append(value)
    found += [unquote(s) for s in found]
    # very short values would mask unrelated text and are no real secret anyway
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def redact_url(url: str) -> str:
    """The URL fit for a reason or a log: no userinfo, secret parameters and fragment masked."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc:
        netloc = f"{REDACTED}@{netloc}"
    query = "&".join(
        f"{name}={REDACTED}" if sep and value and _SECRET_PARAM.search(name) else pair
        for pair in parts.query.split("&")
        for name, sep, value in [pair.partition("=")]
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if parts.query else "")


def scrub(text: str, url: str) -> str:
    """``text`` (an error message, say) with every credential of ``url`` masked."""
    for secret in secrets_in(url):
        text = text.replace(secret, REDACTED)
    return text
