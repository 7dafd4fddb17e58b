"""The pure half of an HTTP oracle: find a value in a JSON answer and test the pass condition."""

from __future__ import annotations

import re
from typing import Any

_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")
_CONDITION = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(.+?)\s*$")


ECHO_LIMIT = 200


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """At most ``limit`` characters of what a server sent, marked when cut (for reasons)."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


class OracleError(ValueError):
    """The answer lacks the value, or the condition cannot be applied to it."""


def extract(document: Any, json_path: str) -> Any:
    """Follow a simple JSONPath (``$.a.b[0]['c']``) into a parsed JSON document."""
    if not json_path.startswith("$"):
        raise OracleError(f"jsonPath {json_path!r} must start with $")
    rest, node = json_path[1:], document
    while rest:
        match = _STEP.match(rest)
        if match is None:
            raise OracleError(f"unsupported jsonPath syntax at {rest!r}")
        key, index, quoted1, quoted2 = match.groups()
        rest = rest[match.end() :]
        try:
            if index is not None:
                node = node[int(index)]
            else:
                node = node[key if key is not None else (quoted1 or quoted2 or "")]
        except (KeyError, IndexError, TypeError) as err:
            raise OracleError(f"{json_path} not found in the answer") from err
    return node


def passes(value: Any, condition: str) -> bool:
    """Whether ``value`` satisfies ``condition`` (``< 0.01``, ``== ok``...): numbers if both are."""
    match = _CONDITION.match(condition)
    if match is None:
        raise OracleError(f"passIf {condition!r} is not '<op> <operand>'")
    op, operand = match.groups()
    try:
        left: float | str = float(value)
        right: float | str = float(operand)
    except (TypeError, ValueError):
        if op not in ("==", "!="):
            raise OracleError(
                f"cannot compare {clip(repr(value))} {op} {operand!r} as numbers"
            ) from None
        left, right = str(value), operand.strip("'\"")
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    assert isinstance(left, float) and isinstance(right, float)
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]
