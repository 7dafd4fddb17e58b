"""A raw list-then-watch loop in a thread, with local monotonic arrival times.

Raw JSON (``_preload_content=False``), not generated models: at 100 concurrent runs the bench's
own deserialization would otherwise compete with the operator for the same two cores.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from kloop.adapters.kube import request_kind

Json = dict[str, Any]
OnEvent = Callable[[str, Json, float], None]
WATCH_SECONDS = 5  # each watch request ends after this, so stop() returns soon


def counted_client(kubeconfig: str, tally: Counter[tuple[str, str]]) -> client.ApiClient:
    """A client whose every request is tallied by (verb, resource), like the operator's."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=kubeconfig)
    send = api.call_api

    def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        tally[request_kind(method, url)] += 1
        return send(method, url, *args, **kwargs)

    api.call_api = counted
    return api


class Watcher:
    """``list_fn(*args)`` then watch from its resourceVersion; ``on_event(type, obj, t)``."""

    def __init__(self, list_fn: Callable[..., Any], *args: Any, on_event: OnEvent, **kw: Any):
        self.list_fn, self.args, self.kw, self.on_event = list_fn, args, kw, on_event
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="bench-watch")
        self.error: BaseException | None = None

    def start(self) -> Watcher:
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError(f"watch did not start: {self.error}")
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(WATCH_SECONDS + 5)

    def _list(self) -> str:
        raw = self.list_fn(*self.args, _preload_content=False, **self.kw)
        body = json.loads(raw.data)
        now = time.monotonic()
        for item in body.get("items") or []:
            self.on_event("ADDED", item, now)
        return str(body["metadata"]["resourceVersion"])

    def _run(self) -> None:
        try:
            version = self._list()
            self.ready.set()
            while not self.stopping.is_set():
                resp = self.list_fn(
                    *self.args,
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,
                    _preload_content=False,
                    **self.kw,
                )
                try:
                    for line in iter_resp_lines(resp):
                        event = json.loads(line)
                        now = time.monotonic()
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            version = self._list() if obj.get("code") == 410 else version
                            break
                        version = obj["metadata"].get("resourceVersion") or version
                        if event["type"] != "BOOKMARK":
                            self.on_event(event["type"], obj, now)
                finally:
                    resp.release_conn()
        except BaseException as err:  # surfaced by the caller through .error
            self.error = err
            self.ready.set()
