"""Label shards: which Loops, LoopRuns and pods one operator replica owns (docs/scaling.md).

A shard is a label selector over one label, ``kloop.dev/shard``, given to ``kloop-operator
--shard-label``. The apiserver applies it to the operator's watches, so a replica never even
receives another shard's objects. Runs a Loop starts carry the Loop's ``kloop.dev/shard`` label and
pods carry their run's, which keeps a Loop, its runs and their pods in one shard; that is why the
selector may name no other label (the label it routes by must be the one kloop copies).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

LABEL_SHARD = "kloop.dev/shard"
OPERATOR_NAME = "kloop-operator"

_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"
_REQUIREMENT = re.compile(
    r"""\s*(?:
        (?P<absent>!)\s*(?P<k1>[^\s,=!()]+)
      | (?P<k2>[^\s,=!()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)
      | (?P<k3>[^\s,=!()]+)\s+(?P<setop>in|notin)\s*(?P<values>\([^)]*\))
      | (?P<k4>[^\s,=!()]+)
    )\s*(?:,|$)""",
    re.VERBOSE,
)


class Op(StrEnum):
    """A requirement's operator, as Kubernetes label selectors spell them."""

    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    ABSENT = "!"


@dataclass(frozen=True)
class Requirement:
    """One comma-separated part of the selector."""

    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes semantics: ``!=`` and ``notin`` also match objects without the label."""
        value = labels.get(LABEL_SHARD)
        match self.op:
            case Op.EQUALS | Op.IN:
                return value is not None and value in self.values
            case Op.NOT_EQUALS | Op.NOT_IN:
                return value is None or value not in self.values
            case Op.EXISTS:
                return value is not None
            case Op.ABSENT:
                return value is None


@dataclass(frozen=True)
class Shard:
    """A validated shard selector; ``selector`` is what the apiserver receives."""

    selector: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with these labels is this shard's."""
        return all(r.matches(labels) for r in self.requirements)

    def pod_selector(self, base: str) -> str:
        """``base`` (e.g. kloop's run label) and the shard: only this shard's pods."""
        return f"{base},{self.selector}"

    @property
    def slug(self) -> str:
        """A short name for logs and the API user agent: ``a``, ``none``, ``not-a-b``."""
        parts = []
        for r in self.requirements:
            match r.op:
                case Op.EQUALS | Op.IN:
                    parts.append("-".join(r.values) or "empty")
                case Op.NOT_EQUALS | Op.NOT_IN:
                    parts.append("not-" + ("-".join(r.values) or "empty"))
                case Op.EXISTS:
                    parts.append("any")
                case Op.ABSENT:
                    parts.append("none")
        return "_".join(parts)


class ShardError(ValueError):
    """A ``--shard-label`` the operator refuses, with what to write instead."""


def parse(text: str) -> Shard:
    """Validate a shard selector: a Kubernetes label selector over ``kloop.dev/shard`` only."""
    source = text.strip()
    if not source:
        raise ShardError(f"the shard selector is empty; e.g. {LABEL_SHARD}=a or !{LABEL_SHARD}")
    requirements: list[Requirement] = []
    pos = 0
    while pos < len(source):
        found = _REQUIREMENT.match(source, pos)
        if found is None or found.end() == pos:
            raise ShardError(f"not a label selector at {source[pos:]!r} in {source!r}")
        requirements.append(_requirement(found, source))
        pos = found.end()
    if source.endswith(","):
        raise ShardError(f"{source!r} ends with a comma")
    canonical = ",".join(_render(r) for r in requirements)
    return Shard(canonical, tuple(requirements))


def _requirement(found: re.Match[str], source: str) -> Requirement:
    key = found["k1"] or found["k2"] or found["k3"] or found["k4"]
    if key != LABEL_SHARD:
        raise ShardError(
            f"the shard selector {source!r} names the label {key!r}: it may name only "
            f"{LABEL_SHARD} (runs and pods inherit that label, so a Loop, its runs and their "
            f"pods stay in one shard); label your Loops with {LABEL_SHARD} instead"
        )
    if found["k1"]:
        return Requirement(Op.ABSENT)
    if found["k4"]:
        return Requirement(Op.EXISTS)
    if found["k2"]:
        values: tuple[str, ...] = (found["value"],)
        op = Op.NOT_EQUALS if found["op"] == "!=" else Op.EQUALS
    else:
        inner = found["values"][1:-1]
        values = tuple(v.strip() for v in inner.split(","))
        op = Op.IN if found["setop"] == "in" else Op.NOT_IN
    for value in values:
        if not re.fullmatch(_VALUE, value) or (op in (Op.IN, Op.NOT_IN) and not value):
            raise ShardError(
                f"{value!r} in {source!r} is not a label value (at most 63 letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit)"
            )
    return Requirement(op, values)


def _render(r: Requirement) -> str:
    match r.op:
        case Op.EQUALS:
            return f"{LABEL_SHARD}={r.values[0]}"
        case Op.NOT_EQUALS:
            return f"{LABEL_SHARD}!={r.values[0]}"
        case Op.IN | Op.NOT_IN:
            return f"{LABEL_SHARD} {r.op.value} ({','.join(r.values)})"
        case Op.EXISTS:
            return LABEL_SHARD
        case Op.ABSENT:
            return f"!{LABEL_SHARD}"


def manager_name(shard: Shard | None) -> str:
    """The operator's name in managedFields (the API user agent up to its first ``/``)."""
    return OPERATOR_NAME if shard is None else f"{OPERATOR_NAME}-shard-{shard.slug}"[:128]


def inherit(labels: dict[str, str], source: Mapping[str, str]) -> dict[str, str]:
    """``labels`` with ``source``'s shard label (set, or removed when ``source`` has none)."""
    out = {k: v for k, v in labels.items() if k != LABEL_SHARD}
    if LABEL_SHARD in source:
        out[LABEL_SHARD] = source[LABEL_SHARD]
    return out
