"""``kubectl kloop``: the human interface to Loops and LoopRuns (see docs/cli.md)."""

from __future__ import annotations


def main() -> int:
    """Entry point of the ``kubectl-kloop`` executable."""
    raise SystemExit("kubectl kloop: not built yet")
