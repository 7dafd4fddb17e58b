"""Release webhooks: receiver paths, signatures, and push/tag events read into one shape.

Pure; the receiver (``kloop.adapters.receiver``) does the HTTP. As with Flux's Receiver, the
path of a trigger is derived from its secret token, so it can be published in status without
giving the token away, and a caller that does not know the token cannot even find the trigger.
Every delivery must then prove the token: GitHub and generic senders sign the body (HMAC-SHA256),
GitLab sends the token itself in a header. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kloop.api.loop import WebhookProvider

PATH_PREFIX = "/hook/"
MAX_BODY_BYTES = 1024 * 1024
MAX_DELIVERY_ID = 128
# a git ref name component: no control characters, spaces or the few characters git forbids
_TAG = re.compile(r"^[^\x00-\x20\x7f~^:?*\[\\]{1,255}$")
_ZERO_SHA = re.compile(r"^0+$")

DELIVERY_HEADERS = {
    WebhookProvider.GITHUB: "x-github-delivery",
    WebhookProvider.GITLAB: "x-gitlab-event-uuid",
    WebhookProvider.GENERIC: "x-delivery-id",
}


class Auth(StrEnum):
    """Whether a delivery proved the token."""

    OK = "ok"
    MISSING = "missing"
    WRONG = "wrong"


class Malformed(ValueError):
    """A correctly signed delivery kloop cannot read (400)."""


@dataclass(frozen=True)
class TagPush:
    """A tag was pushed: what a triggered run's context carries."""

    repository: str
    tag: str
    commit: str
    pushed_by: str


@dataclass(frozen=True)
class Ignored:
    """A valid delivery that starts nothing (a branch push, a deleted tag, a ping)."""

    reason: str


def receiver_path(token: str, namespace: str, loop: str, trigger: str) -> str:
    """``/hook/<sha256>`` over the token and the trigger's identity (Flux's Receiver scheme).

    Flux hashes token + name + namespace; kloop adds the trigger's name and puts a ``/`` between
    the parts (no name may contain one), so two triggers never share a path.
    """
    digest = hashlib.sha256(f"{token}/{namespace}/{loop}/{trigger}".encode()).hexdigest()
    return PATH_PREFIX + digest


def _hmac_hex(token: str, body: bytes) -> str:
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def _check_signature(header: str | None, token: str, body: bytes) -> Auth:
    if not header:
        return Auth.MISSING
    scheme, _, given = header.strip().partition("=")
    if scheme.lower() != "sha256" or not given:
        return Auth.WRONG
    ok = hmac.compare_digest(given.lower().encode(), _hmac_hex(token, body).encode())
    return Auth.OK if ok else Auth.WRONG


def verify(provider: WebhookProvider, token: str, headers: Mapping[str, str], body: bytes) -> Auth:
    """Check a delivery against the token; ``headers`` keys are lower-case.

    github: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``; gitlab:
    ``X-Gitlab-Token: <token>``; generic: ``X-Signature: sha256=<hex HMAC-SHA256 of the body>``.
    """
    if provider is WebhookProvider.GITHUB:
        return _check_signature(headers.get("x-hub-signature-256"), token, body)
    if provider is WebhookProvider.GENERIC:
        return _check_signature(headers.get("x-signature"), token, body)
    given = headers.get("x-gitlab-token")
    if not given:
        return Auth.MISSING
    return Auth.OK if hmac.compare_digest(given.encode(), token.encode()) else Auth.WRONG


def sign(token: str, body: bytes) -> str:
    """The ``sha256=<hex>`` signature header value for ``body`` (what senders compute)."""
    return "sha256=" + _hmac_hex(token, body)


def delivery_id(provider: WebhookProvider, headers: Mapping[str, str], body: bytes) -> str:
    """The sender's delivery id; without one, a digest of the body (a byte-identical replay)."""
    given = headers.get(DELIVERY_HEADERS[provider], "").strip()
    if given:
        return given[:MAX_DELIVERY_ID]
    return "body-sha256:" + hashlib.sha256(body).hexdigest()


def _document(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:
        raise Malformed(f"body is not JSON: {str(err)[:120]}") from None
    if not isinstance(doc, dict):
        raise Malformed("body is not a JSON object")
    return doc


def _text(doc: Mapping[str, Any], *path: str, required: bool = False) -> str:
    value: Any = doc
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise Malformed(f"{'.'.join(path)} must be a non-empty string")
    return value[:1024]


def _tag_of(ref: str) -> str | None:
    if not ref.startswith("refs/tags/"):
        return None
    tag = ref.removeprefix("refs/tags/")
    if not _TAG.match(tag):
        raise Malformed(f"{ref[:300]!r} is not a valid tag ref")
    return tag


def _github(headers: Mapping[str, str], doc: dict[str, Any]) -> TagPush | Ignored:
    event = headers.get("x-github-event", "")
    if event == "ping":
        return Ignored("ping: the hook is set up")
    if event != "push":
        return Ignored(f"event {event[:40]!r} is not a push")
    ref = _text(doc, "ref", required=True)
    tag = _tag_of(ref)
    if tag is None:
        return Ignored(f"push to {ref[:200]}, not a tag")
    if doc.get("deleted") is True:
        return Ignored(f"tag {tag} was deleted")
    commit = _text(doc, "head_commit", "id") or _text(doc, "after", required=True)
    return TagPush(
        repository=_text(doc, "repository", "full_name", required=True),
        tag=tag,
        commit=commit,
        pushed_by=_text(doc, "pusher", "name") or _text(doc, "sender", "login"),
    )


def _gitlab(headers: Mapping[str, str], doc: dict[str, Any]) -> TagPush | Ignored:
    event = headers.get("x-gitlab-event", "")
    if event == "Push Hook":
        return Ignored(f"push to {_text(doc, 'ref')[:200]}, not a tag")
    if event != "Tag Push Hook":
        return Ignored(f"event {event[:40]!r} is not a tag push")
    ref = _text(doc, "ref", required=True)
    tag = _tag_of(ref)
    if tag is None:
        raise Malformed(f"a Tag Push Hook for {ref[:200]!r}, not refs/tags/...")
    commit = _text(doc, "checkout_sha")
    if not commit or _ZERO_SHA.match(_text(doc, "after")):
        return Ignored(f"tag {tag} was deleted")
    return TagPush(
        repository=_text(doc, "project", "path_with_namespace", required=True),
        tag=tag,
        commit=commit,
        pushed_by=_text(doc, "user_username") or _text(doc, "user_name"),
    )


def _generic(doc: dict[str, Any]) -> TagPush | Ignored:
    if "tag" in doc:
        tag = _text(doc, "tag", required=True)
        if not _TAG.match(tag):
            raise Malformed(f"{tag[:300]!r} is not a valid tag name")
    else:
        ref = _text(doc, "ref", required=True)
        found = _tag_of(ref)
        if found is None:
            return Ignored(f"push to {ref[:200]}, not a tag")
        tag = found
    return TagPush(
        repository=_text(doc, "repository", required=True),
        tag=tag,
        commit=_text(doc, "commit"),
        pushed_by=_text(doc, "pushedBy"),
    )


def parse(provider: WebhookProvider, headers: Mapping[str, str], body: bytes) -> TagPush | Ignored:
    """Read a verified delivery: a tag push, or why it starts nothing; Malformed if unreadable.

    github: a ``push`` event whose ref is ``refs/tags/<tag>`` (``ping`` and branch pushes are
    ignored); gitlab: a ``Tag Push Hook``; generic: ``{"repository", "tag" | "ref", "commit"?,
    "pushedBy"?}``.
    """
    doc = _document(body)
    if provider is WebhookProvider.GITHUB:
        return _github(headers, doc)
    if provider is WebhookProvider.GITLAB:
        return _gitlab(headers, doc)
    return _generic(doc)


class SeenDeliveries:
    """Delivery ids already received, per trigger, the oldest forgotten past ``limit``.

    In memory only: after a restart a replayed delivery is still refused by its tag (the tag's
    run exists, and status.triggers[].recentTags lists it).
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def check_and_add(self, trigger: str, delivery: str) -> bool:
        """True when the delivery is new (and remember it), False when it is a replay."""
        key = (trigger, delivery)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True

    def forget(self, trigger: str, delivery: str) -> None:
        """Let a delivery id be received again (its processing failed before anything happened)."""
        self._seen.pop((trigger, delivery), None)
