"""Drive any command-line agent: the prompt on stdin or as an argument, its output parsed.

Recipes (docs/agents.md): Claude Code ``claude -p --output-format json --json-schema {schema}``
(one JSON object: ``result`` or ``structured_output``, ``usage``, ``total_cost_usd``), Codex
``codex exec --json --output-schema {schema_file} -`` (JSON lines: ``item.completed`` agent
messages, ``turn.completed`` usage). Anything else is read as plain text, with no usage.

Placeholders in the command's arguments: ``{prompt}`` (then nothing goes to stdin), ``{schema}``
(the answer's JSON schema, compact) and ``{schema_file}`` (a file holding it).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kloop.kit.harness import HarnessFailed, Reply, Retry, retry_instructions
from kloop.kit.prompt import Prompt
from kloop.kit.usage import Usage, from_anthropic, from_openai


def _claude_result(doc: dict[str, Any]) -> Reply:
    """Claude Code's ``--output-format json`` object (or stream-json's last line)."""
    structured = doc.get("structured_output")
    text = json.dumps(structured) if isinstance(structured, dict) else str(doc.get("result") or "")
    usage = from_anthropic(doc.get("usage") or {}, doc.get("total_cost_usd"))
    note = f"the agent reported an error ({doc.get('subtype')})" if doc.get("is_error") else ""
    return Reply(text, usage, note)


def _json_lines(stdout: str) -> list[dict[str, Any]] | None:
    """Every non-empty line as a JSON object, or None if any line is not one."""
    events = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        events.append(event)
    return events or None


def parse_output(stdout: str) -> Reply:
    """The answer and usage in a command's stdout: Claude Code JSON, Codex JSONL or plain text."""
    try:
        whole = json.loads(stdout)
    except ValueError:
        whole = None
    if isinstance(whole, dict) and whole.get("type") == "result":
        return _claude_result(whole)
    events = _json_lines(stdout)
    if events is None:
        return Reply(stdout, Usage())
    results = [e for e in events if e.get("type") == "result"]
    if results:  # claude --output-format stream-json
        return _claude_result(results[-1])
    usage, text, seen = Usage(), "", False
    for event in events:
        kind = event.get("type")
        if kind == "turn.completed":
            u = event.get("usage") or {}
            usage += from_openai(
                u.get("input_tokens"), u.get("output_tokens"), u.get("cached_input_tokens")
            )
            seen = True
        elif kind == "item.completed":
            item = event.get("item") or {}
            if item.get("type") == "agent_message":
                text, seen = str(item.get("text") or ""), True
    if not seen:  # JSON lines of some other tool: its output is the answer
        return Reply(stdout, Usage())
    return Reply(text, usage)


class CommandHarness:
    """Runs ``argv`` once per attempt; stderr goes to the pod's log, stdout is parsed."""

    def __init__(self, argv: Sequence[str], timeout: float | None = None) -> None:
        if not argv:
            raise ValueError("--harness command needs the agent's command after --")
        self.argv = list(argv)
        self.timeout = timeout

    def ask(self, prompt: Prompt, schema: dict[str, Any], retry: Retry | None) -> Reply:
        """Run the command with the prompt (and, on a retry, why the last answer was refused)."""
        text = f"{prompt.system}\n\n{prompt.user}"
        if retry is not None:
            text += f"\n\n## Retry\n\n{retry_instructions(retry)}\n"
        schema_json = json.dumps(schema, separators=(",", ":"))
        with tempfile.TemporaryDirectory(prefix="kloop-agent-") as tmp:
            schema_file = Path(tmp) / "answer.schema.json"
            schema_file.write_text(schema_json)
            values = {"{prompt}": text, "{schema}": schema_json, "{schema_file}": str(schema_file)}
            argv = [_substitute(arg, values) for arg in self.argv]
            as_argument = any("{prompt}" in arg for arg in self.argv)
            try:
                done = subprocess.run(
                    argv,
                    input="" if as_argument else text,
                    stdout=subprocess.PIPE,
                    text=True,
                    errors="replace",
                    timeout=self.timeout,
                )
            except subprocess.TimeoutExpired as err:
                # not str(err): it quotes the whole argv (the prompt, perhaps a secret)
                raise HarnessFailed(f"{argv[0]}: no answer within {self.timeout:g}s") from err
            except OSError as err:
                raise HarnessFailed(f"{argv[0]}: {err.strerror or type(err).__name__}") from err
        if done.returncode != 0:
            raise HarnessFailed(f"{argv[0]} exited with code {done.returncode}")
        return parse_output(done.stdout)


def _substitute(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace(key, value)
    return arg
