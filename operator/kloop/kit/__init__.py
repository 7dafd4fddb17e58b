"""The agent kit: ``kloop-agent run`` turns the agent contract into a real agent (docs/agents.md).

inputs (read /kloop and the env) -> prompt (pure) -> a harness (a command-line agent or an
OpenAI-compatible endpoint) -> answers (extract, validate, retry) -> the result document.
"""
