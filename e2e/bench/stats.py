"""min / median / p99 / max of repeated samples, and their Markdown rows."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100): always one of the samples.

    Nearest rank, not interpolation: with 20 samples p99 is the largest, which is what a tail
    figure over few samples honestly is.
    """
    if not samples:
        raise ValueError("no samples")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} not in (0, 100]")
    ordered = sorted(samples)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True)
class Stats:
    """min / median / p99 / max and the sample count."""

    n: int
    low: float
    median: float
    p99: float
    high: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            raise ValueError("no samples")
        return cls(
            len(samples),
            min(samples),
            statistics.median(samples),
            percentile(samples, 99),
            max(samples),
        )

    def cells(self, fmt: str, scale: float = 1.0) -> list[str]:
        return [format(v * scale, fmt) for v in (self.low, self.median, self.p99, self.high)]


HEADER = ["| metric | n | min | median | p99 | max |", "|---|---:|---:|---:|---:|---:|"]


def row(label: str, samples: Sequence[float], fmt: str, scale: float = 1.0) -> str:
    """One table row; "—" cells when there are no samples (said, never hidden)."""
    if not samples:
        return f"| {label} | 0 | — | — | — | — |"
    s = Stats.of(samples)
    return f"| {label} | {s.n} | " + " | ".join(s.cells(fmt, scale)) + " |"
