"""The answer a model must give, as a JSON schema made from the result models, and its checks.

The model answers only the fields it decides (a maker's outcome and summary, a checker's verdict,
reasons and score); the kit adds ``v``, ``tokens`` and ``costUSD`` from the model's own usage.
The schema is strict-mode shaped (every field required, no others) so OpenAI's ``json_schema``
response format and llama.cpp's grammar both accept it. Length limits are left out of it (not
every endpoint supports them): over-long texts are shortened here instead of refused.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from kloop.api.results import (
    AgentError,
    AgentErrorReason,
    CheckerResult,
    MakerOutcome,
    MakerResult,
    Verdict,
)

Result = MakerResult | CheckerResult

ANSWER_FIELDS: dict[str, tuple[str, ...]] = {
    "maker": ("outcome", "summary"),
    "checker": ("verdict", "reasons", "score"),
}
_MODELS: dict[str, type[BaseModel]] = {"maker": MakerResult, "checker": CheckerResult}
_DROPPED_KEYWORDS = ("title", "default", "description", "maxLength")


class InvalidAnswer(ValueError):
    """The model's answer is not one JSON object of the answer schema; says why in words."""


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with local ``$ref``s replaced by their definitions and cosmetic keys dropped."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k not in _DROPPED_KEYWORDS}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def answer_schema(role: str) -> dict[str, Any]:
    """The JSON schema of ``role``'s answer, generated from its result model."""
    full = _MODELS[role].model_json_schema(by_alias=True)
    defs = full.get("$defs", {})
    fields = ANSWER_FIELDS[role]
    return {
        "type": "object",
        "properties": {name: _inline(full["properties"][name], defs) for name in fields},
        "required": list(fields),
        "additionalProperties": False,
    }


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def extract_json(text: str) -> dict[str, Any]:
    """The answer's JSON object: the whole text, else the last fenced block, else the last ``{…}``.

    Agents often wrap the object in prose or a Markdown fence.
    """
    stripped = text.strip()
    if not stripped:
        raise InvalidAnswer("the answer is empty")
    candidates = [stripped, *reversed(_FENCE.findall(text))]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    # the last top-level object: after one is decoded, the braces inside it are not tried
    # (an object in a reason, or "{}" in quoted code, is part of the answer, not the answer)
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            found = value
        start = text.find("{", end)
    if found is None:
        raise InvalidAnswer(f"no JSON object in the answer: {_quote(stripped)}")
    return found


def _quote(text: str, limit: int = 120) -> str:
    one_line = " ".join(text.split())
    return repr(one_line if len(one_line) <= limit else one_line[:limit] + "…")


def _shorten(text: Any, limit: int) -> Any:
    return text[: limit - 1] + "…" if isinstance(text, str) and len(text) > limit else text


def _fit_lengths(role: str, answer: dict[str, Any]) -> dict[str, Any]:
    """Texts shortened to the result model's limits (the schema leaves lengths out)."""
    fitted = dict(answer)
    if role == "maker":
        fitted["summary"] = _shorten(fitted.get("summary"), 2048)
    elif isinstance(fitted.get("reasons"), list):
        fitted["reasons"] = [_shorten(r, 1024) for r in fitted["reasons"][:20]]
    return fitted


def _explain(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        where = ".".join(str(p) for p in e["loc"]) or "answer"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def to_result(role: str, answer: dict[str, Any], tokens: int, cost_usd: float) -> Result:
    """The result document for a valid answer, or InvalidAnswer saying what is wrong with it."""
    fields = ANSWER_FIELDS[role]
    extra = sorted(set(answer) - set(fields))
    if extra:
        raise InvalidAnswer(
            f"unexpected field(s) {', '.join(extra)}: answer only {', '.join(fields)}"
        )
    missing = [f for f in fields if f not in answer and f != "score"]
    if missing:
        raise InvalidAnswer(f"missing field(s): {', '.join(missing)}")
    doc = {**_fit_lengths(role, answer), "tokens": tokens, "costUSD": round(cost_usd, 6)}
    try:
        if role == "maker":
            return MakerResult.model_validate(doc)
        return CheckerResult.model_validate(doc)
    except ValidationError as err:
        raise InvalidAnswer(_explain(err)) from err


def failed_result(
    role: str,
    message: str,
    tokens: int,
    cost_usd: float,
    reason: AgentErrorReason = AgentErrorReason.INVALID_AGENT_OUTPUT,
) -> Result:
    """What the kit reports when no attempt gave a valid answer: an error that keeps the usage."""
    error = AgentError(reason=reason, message=message[:1024])
    cost = round(cost_usd, 6)
    if role == "maker":
        return MakerResult(outcome=MakerOutcome.FAILED, tokens=tokens, cost_usd=cost, error=error)
    return CheckerResult(verdict=Verdict.INCONCLUSIVE, tokens=tokens, cost_usd=cost, error=error)
