"""The pure half of drift measurement: desired manifests in, drifted objects and fields out.

The operator asks the target's apiserver what a server-side apply of each desired object *would*
produce (a dry run under kloop's own field manager) and compares that with the live object. Every
difference between the two comes from the desired manifest: server defaults are applied to both,
and fields other managers own but the manifest does not set are kept as they are. So an object is
drifted when it is missing, when the would-be object differs from the live one in a field the
manifest sets, or when the apply conflicts (another manager owns such a field with another value).
The I/O half is ``kloop.adapters.drift``.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from kloop.core.model import DriftOutcome

FIELD_MANAGER = "kloop-drift"
"""The field manager of the dry-run applies: it never owns anything (nothing is persisted)."""

MAX_OBJECTS = 256
"""Desired objects per stage (the API's bound on ``drift.resources``, applied to ConfigMaps)."""
MAX_OBJECT_BYTES = 256 * 1024
"""One desired object, serialized as JSON."""
MAX_MANIFEST_BYTES = 1024 * 1024
"""All desired objects together (a ConfigMap holds at most 1 MiB anyway)."""
MAX_DETAILS = 20
"""Lines of detail per outcome (status, memory and feedback stay small)."""
MAX_DETAIL_CHARS = 200
MAX_FIELDS_PER_OBJECT = 3
"""Drifted fields named per object; the rest are counted."""

VOLATILE_METADATA = frozenset(
    {
        "resourceVersion",
        "generation",
        "managedFields",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "uid",
        "selfLink",
    }
)
"""Metadata the server owns and changes by itself; never drift, even if a manifest sets it."""
IGNORED_TOP_LEVEL = frozenset({"status"})
"""Written by controllers, not by whoever applies the manifest."""


class _Missing:
    """No value at a path (distinct from an explicit null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class _Hidden:
    """A value kloop will not repeat (a Secret's)."""

    def __repr__(self) -> str:
        return "HIDDEN"


HIDDEN: Any = _Hidden()
HIDDEN_KINDS = frozenset({"Secret"})
"""Kinds whose values never appear in details (status, memory and feedback are widely read)."""


class ManifestError(ValueError):
    """The desired manifests cannot be used (bad YAML, not an object, over the bounds)."""


@dataclass(frozen=True)
class FieldDrift:
    """One field of a desired object whose live value is not the one the manifest gives."""

    path: str
    live: Any
    want: Any
    owner: str | None = None
    """The field manager that owns the live value, when the apply conflicted with it."""


@dataclass(frozen=True)
class ObjectDrift:
    """The measurement of one desired object: missing, drifted fields, or in sync."""

    ref: str
    missing: bool = False
    fields: list[FieldDrift] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        """Whether it counts against ``maxDriftedObjects``."""
        return self.missing or bool(self.fields)


# --- desired manifests ----------------------------------------------------------------------


def parse_manifests(sources: dict[str, str]) -> list[dict[str, Any]]:
    """The objects in YAML documents (``key -> text``, as a ConfigMap's data), in key order.

    Empty documents are skipped; a ``kind: List`` is unpacked. Anything but a mapping per
    document is an error naming the key.
    """
    objects: list[dict[str, Any]] = []
    for key in sorted(sources):
        try:
            documents = list(yaml.safe_load_all(sources[key]))
        except yaml.YAMLError as err:
            raise ManifestError(f"{key}: not valid YAML: {_one_line(str(err))}") from err
        for number, doc in enumerate(documents, start=1):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ManifestError(f"{key}: document {number} is not an object")
            if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
                objects.extend(doc["items"])
            else:
                objects.append(doc)
    return objects


def check_desired(objects: list[Any]) -> list[dict[str, Any]]:
    """Validate what a stage wants: objects with apiVersion, kind and a name, within bounds."""
    if len(objects) > MAX_OBJECTS:
        raise ManifestError(f"{len(objects)} desired objects; at most {MAX_OBJECTS} are measured")
    total = 0
    for number, obj in enumerate(objects, start=1):
        if not isinstance(obj, dict):
            raise ManifestError(f"desired object {number} is not an object")
        meta = obj.get("metadata")
        if not (
            isinstance(obj.get("apiVersion"), str)
            and isinstance(obj.get("kind"), str)
            and isinstance(meta, dict)
            and isinstance(meta.get("name"), str)
            and meta["name"]
        ):
            raise ManifestError(f"desired object {number} needs apiVersion, kind and metadata.name")
        size = len(json.dumps(obj, default=str))
        if size > MAX_OBJECT_BYTES:
            raise ManifestError(f"{object_ref(obj)} is {size} bytes; at most {MAX_OBJECT_BYTES}")
        total += size
    if total > MAX_MANIFEST_BYTES:
        raise ManifestError(f"desired objects are {total} bytes; at most {MAX_MANIFEST_BYTES}")
    return objects


def object_ref(obj: dict[str, Any], namespace: str | None = None) -> str:
    """``Kind namespace/name``, or ``Kind name`` for cluster-scoped objects (for humans)."""
    meta = obj.get("metadata") or {}
    ns = namespace if namespace is not None else meta.get("namespace")
    name = meta.get("name", "?")
    return f"{obj.get('kind', '?')} {ns}/{name}" if ns else f"{obj.get('kind', '?')} {name}"


# --- comparison -----------------------------------------------------------------------------


def drifted_fields(desired: Any, would_be: Any, live: Any) -> list[FieldDrift]:
    """Fields the desired manifest sets where the dry-run result differs from the live object.

    Walks the manifest, not the objects, so fields only the server or other managers set are
    never reported; status and volatile metadata are skipped. Lists of objects keyed by ``name``
    (containers, env, volumes) are matched by name, other lists are compared whole.
    """
    out: list[FieldDrift] = []
    if not isinstance(desired, dict):
        return out
    for key, value in as_stored(desired).items():
        if key in IGNORED_TOP_LEVEL:
            continue
        if key == "metadata" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in VOLATILE_METADATA}
        _walk(value, _get(would_be, key), _get(live, key), _key_path("", key), out)
    return out


def as_stored(desired: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the apiserver stores it, where that differs by design.

    A Secret's ``stringData`` is write-only: the server merges it into ``data`` (base64), so that
    is where a drifted value shows.
    """
    string_data = desired.get("stringData")
    if desired.get("kind") != "Secret" or not isinstance(string_data, dict):
        return desired
    encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in string_data.items()}
    out = {k: v for k, v in desired.items() if k != "stringData"}
    out["data"] = {**(desired.get("data") or {}), **encoded}
    return out


def _walk(desired: Any, would_be: Any, live: Any, path: str, out: list[FieldDrift]) -> None:
    if would_be == live:
        return
    if live is MISSING:  # a whole map or list item the live object lacks: name it once
        out.append(FieldDrift(path, live, would_be))
        return
    if isinstance(desired, dict) and desired and isinstance(would_be, dict):
        for key, value in desired.items():
            _walk(value, _get(would_be, key), _get(live, key), _key_path(path, key), out)
        return
    if _named_items(desired) and _named_items(would_be):
        live_items = live if _named_items(live) else []
        for item in desired:
            name = item["name"]
            _walk(
                item,
                _by_name(would_be, name),
                _by_name(live_items, name),
                f"{path}[name={name}]",
                out,
            )
        return
    out.append(FieldDrift(path, live, would_be))


def _get(obj: Any, key: str) -> Any:
    return obj.get(key, MISSING) if isinstance(obj, dict) else MISSING


def _named_items(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in value)
    )


def _by_name(items: list[dict[str, Any]], name: str) -> Any:
    return next((i for i in items if i.get("name") == name), MISSING)


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def _key_path(path: str, key: str) -> str:
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


# --- apply conflicts ------------------------------------------------------------------------

_MANAGER = re.compile(r'conflict with "([^"]*)"')


def parse_conflicts(status: Any) -> list[tuple[str, str]]:
    """(field, manager) pairs from a 409 Status of a server-side apply; [] if it is not one."""
    if not isinstance(status, dict):
        return []
    causes = (status.get("details") or {}).get("causes") or []
    pairs = []
    for cause in causes:
        if not isinstance(cause, dict) or cause.get("reason") != "FieldManagerConflict":
            continue
        found = _MANAGER.search(str(cause.get("message") or ""))
        pairs.append((str(cause.get("field") or "").lstrip("."), found.group(1) if found else "?"))
    return pairs


_SEGMENT = re.compile(r"\.?([^.\[]+)|\[([^\]]*)\]")


def resolve(obj: Any, server_path: str) -> Any:
    """The value at a path as the apiserver names fields (``spec.containers[name="a"].image``).

    Map keys are not escaped in that syntax (``data.app.conf`` may be the key ``app.conf``),
    so a segment that is not a key is joined with the next ones until it is.
    """
    segments = [m.group(0) for m in _SEGMENT.finditer(server_path)]
    node = obj
    i = 0
    while i < len(segments):
        seg = segments[i]
        if seg.startswith("["):
            node = _select(node, seg[1:-1])
            i += 1
        else:
            if not isinstance(node, dict):
                return MISSING
            key, j = seg.lstrip("."), i + 1
            while key not in node and j < len(segments) and not segments[j].startswith("["):
                key, j = key + segments[j], j + 1
            if key not in node:
                return MISSING
            node, i = node[key], j
        if node is MISSING:
            return MISSING
    return node


def _select(node: Any, selector: str) -> Any:
    """An item of a list by ``k="v",k2=1`` (associative) or ``=v`` (set) or index."""
    if not isinstance(node, list):
        return MISSING
    if selector.isdigit():
        index = int(selector)
        return node[index] if index < len(node) else MISSING
    if selector.startswith("="):
        value = _json_or_text(selector[1:])
        return value if value in node else MISSING
    wanted = {}
    for part in selector.split(","):
        key, _, raw = part.partition("=")
        wanted[key] = _json_or_text(raw)
    return next(
        (i for i in node if isinstance(i, dict) and all(i.get(k) == v for k, v in wanted.items())),
        MISSING,
    )


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def conflict_fields(
    desired: dict[str, Any], live: dict[str, Any], conflicts: list[tuple[str, str]]
) -> list[FieldDrift]:
    """The fields another manager owns with a value other than the manifest's."""
    desired = as_stored(desired)
    return [
        FieldDrift(path, resolve(live, path), resolve(desired, path), owner)
        for path, owner in conflicts
    ]


def hide_secrets(kind: str, fields: list[FieldDrift]) -> list[FieldDrift]:
    """The fields without their values when the object is a Secret (the path still shows)."""
    if kind not in HIDDEN_KINDS:
        return fields
    return [FieldDrift(f.path, HIDDEN, HIDDEN, f.owner) for f in fields]


# --- outcome --------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is MISSING:
        return "unset"
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 60 else f"{text[:59]}…"


def describe_field(ref: str, drift: FieldDrift) -> str:
    """``ConfigMap team-a/settings: data.mode is "x", want "y"`` (+ who owns it, on conflict)."""
    owner = f" (set by {drift.owner})" if drift.owner else ""
    if drift.live is HIDDEN:
        return f"{ref}: {drift.path} differs (value hidden){owner}"
    if drift.want is MISSING and drift.owner:
        return f"{ref}: {drift.path} is {_show(drift.live)}, owned by {drift.owner}"
    return f"{ref}: {drift.path} is {_show(drift.live)}, want {_show(drift.want)}{owner}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str) -> str:
    text = _one_line(text)
    return text if len(text) <= MAX_DETAIL_CHARS else f"{text[: MAX_DETAIL_CHARS - 1]}…"


def summarize(results: list[ObjectDrift]) -> DriftOutcome:
    """The outcome: how many objects drifted, and bounded human lines saying how."""
    lines: list[str] = []
    drifted = [r for r in results if r.drifted]
    for result in drifted:
        if result.missing:
            lines.append(f"{result.ref}: missing")
            continue
        lines.extend(describe_field(result.ref, f) for f in result.fields[:MAX_FIELDS_PER_OBJECT])
        more = len(result.fields) - MAX_FIELDS_PER_OBJECT
        if more > 0:
            lines.append(f"{result.ref}: and {more} more drifted field{'s' if more > 1 else ''}")
    if len(lines) > MAX_DETAILS:
        rest = len(lines) - (MAX_DETAILS - 1)
        lines = [*lines[: MAX_DETAILS - 1], f"and {rest} more lines"]
    return DriftOutcome(objects=len(drifted), details=[_clip(line) for line in lines])


def failed(why: str) -> DriftOutcome:
    """An outcome that measured nothing: the grader errs instead of passing or failing."""
    return DriftOutcome(objects=0, details=[], error=_clip(why))
