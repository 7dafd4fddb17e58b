"""Token usage as the model reports it, and what it costs at the Loop's prices.

Providers count differently: OpenAI (and Codex) count cached prompt tokens inside the prompt
tokens; Anthropic (Claude Code) reports cache reads and writes next to the input tokens. Both are
normalized here to uncached input, cached input and output, so one price table fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PRICE_ENV = {
    "input": "KLOOP_PRICE_INPUT_USD_PER_MTOK",
    "output": "KLOOP_PRICE_OUTPUT_USD_PER_MTOK",
    "cached": "KLOOP_PRICE_CACHED_INPUT_USD_PER_MTOK",
}


@dataclass(frozen=True)
class Usage:
    """Tokens of one or more model calls, and the cost the agent itself reported, if any."""

    input_tokens: int = 0
    """Prompt tokens not read from a cache."""
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reported_cost_usd: float | None = None

    @property
    def tokens(self) -> int:
        """All tokens: what the run's budget counts."""
        return self.input_tokens + self.cached_input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        reported = (
            None
            if self.reported_cost_usd is None and other.reported_cost_usd is None
            else (self.reported_cost_usd or 0.0) + (other.reported_cost_usd or 0.0)
        )
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.output_tokens + other.output_tokens,
            reported,
        )


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens (spec.pricing, passed to the pod as KLOOP_PRICE_*)."""

    input: float
    output: float
    cached_input: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Prices | None:
        """The prices in ``env``, or None when the Loop sets none (or sets them unreadably)."""
        try:
            if not (env.get(PRICE_ENV["input"]) and env.get(PRICE_ENV["output"])):
                return None
            cached = env.get(PRICE_ENV["cached"])
            return cls(
                float(env[PRICE_ENV["input"]]),
                float(env[PRICE_ENV["output"]]),
                float(cached) if cached else None,
            )
        except ValueError:
            return None


def cost_usd(usage: Usage, prices: Prices | None) -> float:
    """The Loop's prices times the usage; without prices, what the agent reported (or 0)."""
    if prices is None:
        return usage.reported_cost_usd or 0.0
    cached_price = prices.input if prices.cached_input is None else prices.cached_input
    return (
        usage.input_tokens * prices.input
        + usage.cached_input_tokens * cached_price
        + usage.output_tokens * prices.output
    ) / 1_000_000


def _int(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def from_openai(prompt: object, completion: object, cached: object = 0) -> Usage:
    """Chat Completions / Codex: cached tokens are part of the prompt tokens."""
    total_in, cached_in = _int(prompt), _int(cached)
    return Usage(max(total_in - cached_in, 0), min(cached_in, total_in), _int(completion))


def from_anthropic(usage: Mapping[str, object], reported_cost: object = None) -> Usage:
    """Claude Code's ``usage``: input, cache writes (billed as input here) and cache reads."""
    cost = float(reported_cost) if isinstance(reported_cost, int | float) else None
    return Usage(
        _int(usage.get("input_tokens")) + _int(usage.get("cache_creation_input_tokens")),
        _int(usage.get("cache_read_input_tokens")),
        _int(usage.get("output_tokens")),
        cost,
    )
