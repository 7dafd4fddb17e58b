"""What every harness does: ask once, return the answer's text and the usage it cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kloop.kit.prompt import Prompt
from kloop.kit.usage import Usage


@dataclass(frozen=True)
class Retry:
    """The previous attempt's answer and what was wrong with it, for the next attempt."""

    answer: str
    problem: str


@dataclass(frozen=True)
class Reply:
    """One attempt's answer text and usage; ``note`` says why it may be cut (e.g. max_tokens)."""

    text: str
    usage: Usage
    note: str = ""


class HarnessFailed(RuntimeError):
    """The agent could not be asked at all (command failed, endpoint unreachable): no answer."""


class Harness(Protocol):
    """A command-line agent or a chat endpoint."""

    def ask(self, prompt: Prompt, schema: dict[str, Any], retry: Retry | None) -> Reply:
        """One attempt; ``retry`` carries the invalid previous answer and why it was refused."""
        ...


def retry_instructions(retry: Retry) -> str:
    """What the next attempt is told about the one before."""
    return (
        f"Your previous answer was refused: {retry.problem}. "
        "Answer again with exactly one JSON object matching the schema, and nothing else."
    )
