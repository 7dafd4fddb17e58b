"""Command-line tools: kloop-agent (for agents and checkers)."""
