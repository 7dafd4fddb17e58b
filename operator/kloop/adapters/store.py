"""The latest copy of the objects kloop watches, so a reconcile pass reads memory, not the API.

kopf already streams every LoopRun, Loop and kloop pod to the operator; this store keeps the
newest body of each (fed by the event handlers) and the operator's own writes (the apiserver's
answer to a create, replace or patch), so a pass needs no GET or LIST. What makes it safe:

- **Newest wins.** A body replaces the stored one only if its ``resourceVersion`` is newer, so a
  late watch event never rolls back what a write returned. Kubernetes calls resource versions
  opaque; kloop compares them as integers (etcd's revision, what every apiserver serves today) and
  treats anything else as newer, which degrades to "last event wins".
- **Pods are seeded per run.** A run's first pass (and one every ``RESEED_SECONDS``) lists its pods
  with a real LIST and records the list's resource version: a watch event for a pod the list did not
  hold, older than the list, is a pod deleted meanwhile and is dropped. So a restart never sees
  too few pods (which would look like pods to create) nor ghosts (which would look like pods
  running), and a watch that missed a deletion is corrected by the next reseed.
- **Compact.** Only what kloop reads of a pod is kept, and every stored body is a compact copy
  (``compact``: interned keys, short values shared); with 1,000 runs the store was the largest
  share of the operator's memory.
- **Handed out read-only.** Callers get the stored dicts and must not mutate them: the I/O layer
  rebinds, never edits (``Snapshot.run`` is replaced by the apiserver's answer after a write).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kloop.adapters.kube import Json
from kloop.core import names

RESEED_SECONDS = 300.0
"""How often a live run re-lists its pods for real (covers a deletion a watch gap hid)."""

Key = tuple[str, str]


def resource_version(obj: Json) -> int | None:
    """The object's resourceVersion as an integer, None when it is not one."""
    value = (obj.get("metadata") or {}).get("resourceVersion") or ""
    return int(value) if value.isdigit() else None


def newer(candidate: Json, stored: Json | None) -> bool:
    """Whether ``candidate`` should replace ``stored`` (same object, later or unknown version)."""
    if stored is None:
        return True
    new, old = resource_version(candidate), resource_version(stored)
    return new is None or old is None or new > old


def _key(obj: Json) -> Key:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


@dataclass
class _Seed:
    version: int | None
    """The resourceVersion of the run's last LIST (None: the first LIST is in flight)."""
    at: float
    due: bool = False
    """List again on the next pass (after a conflict or an error); events are still stored."""


@dataclass
class Store:
    """LoopRuns, Loops and kloop's pods, newest first; pods indexed by the run they belong to."""

    runs: dict[Key, Json] = field(default_factory=dict)
    loops: dict[Key, Json] = field(default_factory=dict)
    pods: dict[Key, Json] = field(default_factory=dict)
    _pods_by_run: dict[Key, set[str]] = field(default_factory=dict)
    _seeds: dict[Key, _Seed] = field(default_factory=dict)
    _stale: set[Key] = field(default_factory=set)
    _runs_by_loop: dict[Key, set[str]] = field(default_factory=dict)
    on_run_change: Callable[[Json | None, Json | None], None] | None = None
    """Called with (before, after) when a stored run changes, whoever stored it (the watch or a
    write's answer), or with (before, None) when it is forgotten: the Loop controller's wake."""

    # --- runs and Loops -------------------------------------------------------------------------

    def put_run(self, run: Json) -> bool:
        """Store a LoopRun if it is newer; whether it was.

        Of its ``managedFields`` only the entries that set annotations are kept (they name who
        approved, resumed or aborted); the rest mirror the whole status and are never read.
        """
        run = _slim(run, keep=_sets_annotations)
        before = self.runs.get(_key(run))
        if not newer(run, before):
            return False
        run = compact(run)
        self.runs[_key(run)] = run
        self._stale.discard(_key(run))
        if before is not None and _loop_ref(before) != _loop_ref(run):
            self._unindex(before)
        self._runs_by_loop.setdefault((_key(run)[0], _loop_ref(run)), set()).add(_key(run)[1])
        if self.on_run_change is not None:
            self.on_run_change(before, run)
        return True

    def put_loop(self, loop: Json) -> bool:
        """Store a Loop (without ``managedFields``, never read) if it is newer; whether it was."""
        loop = _slim(loop)
        if not newer(loop, self.loops.get(_key(loop))):
            return False
        self.loops[_key(loop)] = compact(loop)
        return True

    def forget_run(self, namespace: str, name: str, uid: str | None = None) -> None:
        """The run is deleted: drop it, its pods and its seed (only that uid's, if given)."""
        stored = self.runs.get((namespace, name))
        if uid is not None and stored is not None and _uid(stored) != uid:
            return  # a late DELETED of an earlier run under the same name
        before = self.runs.pop((namespace, name), None)
        self._stale.discard((namespace, name))
        if before is not None:
            self._unindex(before)
        self.forget_pods(namespace, name)
        if before is not None and self.on_run_change is not None:
            self.on_run_change(before, None)

    def run(self, namespace: str, name: str) -> Json | None:
        """The stored run; None when unknown or marked stale (then read it for real)."""
        if (namespace, name) in self._stale:
            return None
        return self.runs.get((namespace, name))

    def settled(self, run: Json) -> Json:
        """The stored copy of ``run`` if it is the same version (compact), else ``run`` itself.

        A run's task keeps its last snapshot while it sleeps; its body is the apiserver's answer
        to the pass's write, which the store already holds in compact form.
        """
        stored = self.runs.get(_key(run))
        version = resource_version(run)
        if stored is not None and version is not None and resource_version(stored) == version:
            return stored
        return run

    def mark_stale(self, namespace: str, name: str) -> None:
        """A write found the stored run out of date (a conflict): the next read goes to the API.

        The run stays stored for its Loop meanwhile (it exists; only its version is old).
        """
        self._stale.add((namespace, name))

    def unmark_stale(self, namespace: str, name: str) -> None:
        """The run was just read for real."""
        self._stale.discard((namespace, name))

    def forget_loop(self, namespace: str, name: str, uid: str | None = None) -> None:
        """The Loop is deleted (only that uid's, if given)."""
        stored = self.loops.get((namespace, name))
        if uid is not None and stored is not None and _uid(stored) != uid:
            return
        self.loops.pop((namespace, name), None)

    def runs_of(self, namespace: str, loop: str) -> list[Json]:
        """The stored runs of one Loop (their ``spec.loopRef.name``), from an index."""
        names_ = sorted(self._runs_by_loop.get((namespace, loop), ()))
        return [self.runs[(namespace, n)] for n in names_ if (namespace, n) in self.runs]

    def _unindex(self, run: Json) -> None:
        key = (_key(run)[0], _loop_ref(run))
        names_ = self._runs_by_loop.get(key)
        if names_ is not None:
            names_.discard(_key(run)[1])
            if not names_:
                del self._runs_by_loop[key]

    # --- pods -----------------------------------------------------------------------------------

    def put_pod(self, pod: Json) -> None:
        """Store a pod of a run being driven, unless a newer copy or the run's seed says no.

        Pods of runs no task drives (finished, or another replica's) are not kept: a run's first
        pass lists its pods anyway. Only what kloop reads of a pod is kept (``pod_view``).
        """
        key = _key(pod)
        seed = self._seeds.get((key[0], _run_label(pod)))
        if seed is None:
            return
        pod = pod_view(pod)
        stored = self.pods.get(key)
        if stored is None:
            version = resource_version(pod)
            if None not in (seed.version, version):
                assert seed.version is not None and version is not None
                if version <= seed.version:
                    return  # older than the run's list, which did not hold it: deleted since
        elif not newer(pod, stored):
            return
        self.pods[key] = compact(pod)
        self._pods_by_run.setdefault((key[0], _run_label(pod)), set()).add(key[1])

    def delete_pod(self, pod: Json) -> None:
        """The pod is gone (unless the stored pod of that name is a newer one: another uid)."""
        key = _key(pod)
        stored = self.pods.get(key)
        if stored is not None and _uid(stored) != _uid(pod):
            return  # a late DELETED of an earlier pod under the same name
        self.pods.pop(key, None)
        run = (key[0], _run_label(stored or pod))
        names_ = self._pods_by_run.get(run)
        if names_ is not None:
            names_.discard(key[1])
            if not names_:
                del self._pods_by_run[run]

    def needs_seed(self, namespace: str, run: str, now: float | None = None) -> bool:
        """Whether the run's pods must be listed for real before the store can answer."""
        seed = self._seeds.get((namespace, run))
        if seed is None or seed.due or seed.version is None:
            return True
        return (now or time.monotonic()) - seed.at >= RESEED_SECONDS

    def seeded_once(self, namespace: str, run: str) -> bool:
        """Whether a LIST of the run's pods has already answered (this is not its first pass)."""
        seed = self._seeds.get((namespace, run))
        return seed is not None and seed.version is not None

    def begin_seed(self, namespace: str, run: str) -> None:
        """A LIST of the run's pods is about to be sent: store their events from now on.

        Without this, an event that arrives while the LIST is in flight (a pod finishing) would
        be dropped, and the LIST's older copy would be all the run knows until the next one.
        """
        self._seeds.setdefault((namespace, run), _Seed(None, time.monotonic(), due=True))

    def seed_pods(self, namespace: str, run: str, listed: Json) -> None:
        """Merge a LIST's answer (``items`` + its version) into what is known of a run's pods.

        A listed pod replaces an older stored copy; a stored pod the list does not hold is
        dropped if it is not newer than the list (deleted before it), kept if it is (created
        after it, seen on the watch while the list was in flight).
        """
        version = resource_version(listed)
        index = self._pods_by_run.setdefault((namespace, run), set())
        listed_names = set()
        for item in listed.get("items") or []:
            item.setdefault("metadata", {}).setdefault("namespace", namespace)
            pod = pod_view(item)
            key = _key(pod)
            listed_names.add(key[1])
            if newer(pod, self.pods.get(key)):
                self.pods[key] = compact(pod)
            index.add(key[1])
        for name in list(index - listed_names):
            stored_version = resource_version(self.pods.get((namespace, name)) or {})
            if version is None or stored_version is None or stored_version <= version:
                self.pods.pop((namespace, name), None)
                index.discard(name)
        if not index:
            del self._pods_by_run[(namespace, run)]
        self._seeds[(namespace, run)] = _Seed(version, time.monotonic())

    def unseed(self, namespace: str, run: str) -> None:
        """Make the next pass list the run's pods for real (after a conflict or an error)."""
        seed = self._seeds.get((namespace, run))
        if seed is not None:
            seed.due = True

    def forget_pods(self, namespace: str, run: str) -> None:
        """No task drives the run any more: drop its pods and stop storing their events."""
        for name in self._pods_by_run.pop((namespace, run), set()):
            self.pods.pop((namespace, name), None)
        self._seeds.pop((namespace, run), None)

    def pods_of(self, namespace: str, run: str) -> list[Json]:
        """The stored pods labelled with this run's name."""
        return [
            self.pods[(namespace, name)]
            for name in sorted(self._pods_by_run.get((namespace, run), ()))
            if (namespace, name) in self.pods
        ]


def _loop_ref(run: Json) -> str:
    return str(((run.get("spec") or {}).get("loopRef") or {}).get("name") or "")


def _uid(obj: Json) -> str | None:
    return (obj.get("metadata") or {}).get("uid")


def _sets_annotations(entry: Json) -> bool:
    return "f:annotations" in ((entry.get("fieldsV1") or {}).get("f:metadata") or {})


def _slim(obj: Json, keep: Callable[[Json], bool] | None = None) -> Json:
    """The object without ``metadata.managedFields`` but the entries ``keep`` selects.

    A shallow copy when there was anything to drop: the caller's dict is left as it was.
    """
    meta = obj.get("metadata") or {}
    managed = meta.get("managedFields")
    if managed is None:
        return obj
    kept = [e for e in managed if keep is not None and keep(e)]
    slim = {k: v for k, v in meta.items() if k != "managedFields"}
    if kept:
        slim["managedFields"] = kept
    return {**obj, "metadata": slim}


def _run_label(pod: Json) -> str:
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(names.LABEL_RUN) or "")


SHARED_MAX = 64
"""Values up to this length are shared between stored bodies (names, labels, phases, reasons)."""

SHARED_CAP = 50_000
"""How many distinct values are shared at most: the table keeps each one alive for good."""

_shared: dict[str, str] = {}


def _share(value: str) -> str:
    """One copy of a short value for every stored body, from a table of bounded size.

    Not ``sys.intern``: on Python 3.12 an interned string is never freed, and values such as
    resourceVersions and timestamps are new on every write.
    """
    found = _shared.get(value)
    if found is not None:
        return found
    if len(_shared) < SHARED_CAP:
        _shared[value] = value
    return value


def compact(obj: Any) -> Any:
    """A deep copy of a JSON value whose keys are interned and short values shared.

    A parsed body holds its own copy of every key and of values repeated across objects
    ("metadata", label keys, the API group, phases, reasons...): compacted, the store keeps one.
    Measured on the bench's LoopRuns, Loops and pods: about half their size in memory. Keys are
    a bounded set (field names, label and annotation keys), so interning them is safe.
    """
    if type(obj) is dict:
        return {sys.intern(str(k)): compact(v) for k, v in obj.items()}
    if type(obj) is list:
        return [compact(v) for v in obj]
    if type(obj) is str and len(obj) <= SHARED_MAX:
        return _share(obj)
    return obj


def _container_state(status: Json) -> Json:
    return {k: status[k] for k in ("name", "state") if k in status}


def pod_view(pod: Json) -> Json:
    """What kloop reads of a pod, and only that.

    Its metadata (without ``managedFields``), its containers' names, and its phase, reason,
    message and containers' states (adapters/pods.py ``observe_pod``, adapters/targets.py).
    A pod's spec (env, volumes, mounts) and the rest of its status are most of its size and
    are never read from the store: a live run's pods were the largest share of the operator's
    memory with 1,000 runs (docs/BENCHMARKS-scale.md). A new dict; the caller's is left as it was.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    view: Json = {
        "metadata": {k: v for k, v in meta.items() if k != "managedFields"},
        "spec": {"containers": [{"name": c.get("name")} for c in spec.get("containers") or []]},
    }
    if status:
        kept: Json = {k: status[k] for k in ("phase", "reason", "message") if k in status}
        for key in ("containerStatuses", "initContainerStatuses"):
            if key in status:
                kept[key] = [_container_state(c) for c in status[key] or []]
        view["status"] = kept
    return view
