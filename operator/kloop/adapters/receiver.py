"""The webhook receiver: an aiohttp server in the operator's event loop, on its own port.

Checks run cheapest first and each refusal returns before any Kubernetes call, so a flood of bad
requests costs a dictionary lookup, a header check or one HMAC, and good deliveries keep being
served: unknown path 404, not POST 405, body over 1 MiB 413 (refused by Content-Length before
reading, or as soon as a chunked body passes the limit; the rest is never read), no signature
401, wrong signature 403, unreadable 400, a delivery id seen before 409, a branch push or other
event 200 (ignored, with the reason), a tag that already ran 409, a run created 202. Only
deliveries that proved the token reach the apiserver or post Events. Nothing here logs a header,
a body or the token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from kloop.adapters import events
from kloop.adapters.kube import Json, Kube
from kloop.adapters.triggers import Delivery, accept_push
from kloop.api.loop import WebhookProvider
from kloop.core import webhooks
from kloop.core.webhooks import Auth, Ignored, Malformed, SeenDeliveries

log = logging.getLogger("kloop.receiver")

EVENT_INTERVAL = 10.0
"""At most one refusal Event per trigger and reason in this many seconds (replay floods)."""


@dataclass(frozen=True)
class Hook:
    """One webhook trigger the receiver serves, keyed by its path."""

    namespace: str
    loop: str
    trigger: str
    provider: WebhookProvider
    token: str
    loop_ref: Json
    """apiVersion, kind and metadata (name, namespace, uid) of the Loop, for Events."""

    @property
    def key(self) -> str:
        """namespace/loop/trigger."""
        return f"{self.namespace}/{self.loop}/{self.trigger}"


class Registry:
    """Receiver paths of every webhook trigger, kept current by the Loop event handler."""

    def __init__(self) -> None:
        self._by_loop: dict[tuple[str, str], dict[str, Hook]] = {}
        self._by_path: dict[str, Hook] = {}

    def set_loop(self, namespace: str, loop: str, hooks: Mapping[str, Hook]) -> None:
        """Replace the hooks of one Loop (path -> hook)."""
        for path in self._by_loop.pop((namespace, loop), {}):
            self._by_path.pop(path, None)
        if hooks:
            self._by_loop[namespace, loop] = dict(hooks)
            self._by_path.update(hooks)

    def drop_loop(self, namespace: str, loop: str) -> None:
        """Forget a deleted Loop's hooks."""
        self.set_loop(namespace, loop, {})

    def hooks_of(self, namespace: str, loop: str) -> dict[str, Hook]:
        """Path -> hook of one Loop."""
        return dict(self._by_loop.get((namespace, loop), {}))

    def get(self, path: str) -> Hook | None:
        """The hook served at ``path``."""
        return self._by_path.get(path)


def _answer(status: int, reason: str, run: str | None = None) -> web.Response:
    doc: Json = {"status": status, "reason": reason}
    if run:
        doc["run"] = run
    return web.json_response(doc, status=status)


async def _read_capped(request: web.Request) -> bytes | None:
    """The body, or None once it passes the limit (the rest is left unread)."""
    data = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        data += chunk
        if len(data) > webhooks.MAX_BODY_BYTES:
            return None
    return bytes(data)


class Receiver:
    """Serves the registry's paths; accepted tag pushes go to ``accept_push``."""

    def __init__(self, kube: Kube, registry: Registry) -> None:
        self.kube = kube
        self.registry = registry
        self.seen = SeenDeliveries()
        self._evented: dict[tuple[str, str], float] = {}
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The aiohttp application: one catch-all route."""
        app = web.Application(client_max_size=webhooks.MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``; an unread oversized body closes its connection at once."""
        self._runner = web.AppRunner(self.app(), access_log=None, lingering_time=0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("webhook receiver listening", extra={"port": port})

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One delivery, refused or accepted (see the module docstring for the order)."""
        hook = self.registry.get(request.path)
        if hook is None:
            return _answer(404, "no receiver at this path")
        if request.method != "POST":
            response = _answer(405, "only POST")
            response.headers["Allow"] = "POST"
            return response
        length = request.content_length
        if length is not None and length > webhooks.MAX_BODY_BYTES:
            return self._refused(hook, 413, f"body of {length} bytes is over 1 MiB")
        body = await _read_capped(request)
        if body is None:
            return self._refused(hook, 413, "body is over 1 MiB")
        headers = {k.lower(): v for k, v in request.headers.items()}
        auth = webhooks.verify(hook.provider, hook.token, headers, body)
        if auth is Auth.MISSING:
            return self._refused(hook, 401, "not signed")
        if auth is Auth.WRONG:
            return self._refused(hook, 403, "wrong signature or token")
        try:
            event = webhooks.parse(hook.provider, headers, body)
        except Malformed as err:
            return await self._signed_refusal(hook, 400, f"malformed delivery: {err}")
        delivery = webhooks.delivery_id(hook.provider, headers, body)
        if not self.seen.check_and_add(hook.key, delivery):
            return await self._signed_refusal(hook, 409, f"delivery {delivery} was received before")
        if isinstance(event, Ignored):
            log.info("delivery ignored: %s", event.reason, extra=self._ctx(hook))
            return _answer(200, f"ignored: {event.reason}")
        try:
            outcome = await accept_push(self.kube, hook.namespace, hook.loop, hook.trigger, event)
        except Exception as err:  # noqa: BLE001 - the sender may retry; the id must not block it
            self.seen.forget(hook.key, delivery)
            log.warning("delivery failed: %s", err, extra=self._ctx(hook))
            return _answer(503, "could not start the run now; deliver again later")
        return await self._report(hook, outcome, event.tag)

    async def _report(self, hook: Hook, outcome: Delivery, tag: str) -> web.Response:
        log.info("delivery for tag %s: %s", tag, outcome.reason, extra=self._ctx(hook))
        if outcome.status == 202:
            await events.record(
                self.kube,
                hook.loop_ref,
                "Normal",
                "WebhookAccepted",
                f"trigger {hook.trigger}: {outcome.reason}",
            )
        elif outcome.status >= 400:
            await self._event(hook, outcome.status, outcome.reason)
        return _answer(outcome.status, outcome.reason, outcome.run)

    def _refused(self, hook: Hook, status: int, reason: str) -> web.Response:
        """A refusal before the token was proven: logged at debug level only (floods)."""
        log.debug("delivery refused (%d): %s", status, reason, extra=self._ctx(hook))
        return _answer(status, reason)

    async def _signed_refusal(self, hook: Hook, status: int, reason: str) -> web.Response:
        log.info("delivery refused (%d): %s", status, reason, extra=self._ctx(hook))
        await self._event(hook, status, reason)
        return _answer(status, reason)

    async def _event(self, hook: Hook, status: int, reason: str) -> None:
        key, now = (hook.key, str(status)), time.monotonic()
        if now - self._evented.get(key, -EVENT_INTERVAL) < EVENT_INTERVAL:
            return
        self._evented[key] = now
        await events.record(
            self.kube,
            hook.loop_ref,
            "Warning",
            "WebhookRefused",
            f"trigger {hook.trigger}: {reason} ({status})"[:1024],
        )

    @staticmethod
    def _ctx(hook: Hook) -> dict[str, str]:
        return {"namespace": hook.namespace, "loop": hook.loop, "trigger": hook.trigger}


def loop_ref(loop: Json) -> Json:
    """What an Event needs of a Loop."""
    meta = loop["metadata"]
    return {
        "apiVersion": loop.get("apiVersion", ""),
        "kind": loop.get("kind", "Loop"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid")},
    }
