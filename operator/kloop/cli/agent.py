"""``kloop-agent``: what agents and checkers call to hand a valid result to the operator.

    kloop-agent report maker --outcome changed --summary "fixed the test" --tokens 1200
    kloop-agent report checker --verdict fail --reason "test_login still flaky"
    kloop-agent workspace clone|push   (kloop's own containers; see kloop.cli.workspace)
    kloop-agent run --role checker --harness openai --model gpt-5-mini
    kloop-agent run --role maker --harness command -- claude -p --output-format json

``run`` is the agent kit (docs/agents.md): it builds the prompt from the contract's inputs, asks
a command-line agent or an OpenAI-compatible endpoint, retries invalid answers, and reports the
result with the model's usage.

The result is validated against the same pydantic schema the operator uses, trimmed to fit the
4 KiB Kubernetes keeps of a termination message, and written to /dev/termination-log (or
``$KLOOP_RESULT_PATH``, or ``--path``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kloop.api.results import TERMINATION_MESSAGE_LIMIT, CheckerResult, MakerResult
from kloop.cli import workspace
from kloop.kit.answers import answer_schema
from kloop.kit.command import CommandHarness
from kloop.kit.harness import Harness, HarnessFailed
from kloop.kit.inputs import KLOOP_DIR, read_inputs
from kloop.kit.prompt import build_prompt
from kloop.kit.run import run_turn
from kloop.kit.usage import Prices

DEFAULT_PATH = "/dev/termination-log"


def _fit(result: BaseModel) -> str:
    """Serialize; shorten the longest texts until the document fits in the limit."""
    doc = result.model_dump(by_alias=True, exclude_none=True, mode="json")
    text = json.dumps(doc, separators=(",", ":"))
    while len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        if doc.get("summary") and len(doc["summary"]) > 64:
            doc["summary"] = doc["summary"][: len(doc["summary"]) // 2] + "…"
        elif doc.get("reasons") and len(doc["reasons"]) > 1:
            doc["reasons"] = doc["reasons"][:-1]
        elif doc.get("reasons") and len(doc["reasons"][0]) > 64:
            doc["reasons"][0] = doc["reasons"][0][: len(doc["reasons"][0]) // 2] + "…"
        elif doc.get("artifacts"):
            doc["artifacts"].popitem()
        else:
            break
        text = json.dumps(doc, separators=(",", ":"))
    return text


def _artifacts(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--artifact wants key=value, got {pair!r}")
        out[key] = value
    return out


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run an agent turn: prompt, ask a harness, report its result",
        description="Build the prompt from /kloop, ask the harness, write the result. "
        "With --harness command, the agent's command follows `--`.",
    )
    run.add_argument("--role", choices=["maker", "checker"], default=os.environ.get("KLOOP_ROLE"))
    run.add_argument("--harness", choices=["command", "openai"], required=True)
    run.add_argument(
        "--model",
        default=os.environ.get("KLOOP_MODEL") or os.environ.get("OPENAI_MODEL"),
        help="model name for --harness openai (default $KLOOP_MODEL, then $OPENAI_MODEL)",
    )
    run.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL"),
        help="the endpoint's base URL, e.g. http://host:8000/v1 (default $OPENAI_BASE_URL)",
    )
    run.add_argument("--attempts", type=int, default=3, help="tries before InvalidAgentOutput")
    run.add_argument("--max-tokens", type=int, help="cap on each answer's tokens (openai)")
    run.add_argument("--temperature", type=float, help="sampling temperature (openai)")
    run.add_argument(
        "--response-format",
        choices=["json_schema", "json_object"],
        default="json_schema",
        help="how the schema is sent (openai): json_schema (OpenAI, vLLM, llama.cpp's server) "
        "or json_object with a schema (llama-cpp-python's server)",
    )
    run.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per request or command run"
    )
    run.add_argument("--kloop-dir", default=str(KLOOP_DIR), help=argparse.SUPPRESS)
    run.add_argument(
        "--print-prompt", action="store_true", help="print the prompt and exit (no model call)"
    )
    run.add_argument("--path", default=os.environ.get("KLOOP_RESULT_PATH", DEFAULT_PATH))


def build_parser() -> argparse.ArgumentParser:
    """The CLI: ``report`` (a maker and a checker form) and ``run`` (the agent kit)."""
    parser = argparse.ArgumentParser(prog="kloop-agent", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    report = sub.add_parser("report", help="write this pod's result for the operator")
    roles = report.add_subparsers(dest="role", required=True)
    maker = roles.add_parser("maker", help="report what the maker did")
    maker.add_argument("--outcome", required=True, choices=["changed", "nothing-to-do", "failed"])
    maker.add_argument("--summary", default="")
    maker.add_argument("--tokens", type=int, default=0)
    maker.add_argument("--cost", type=float, default=0.0, help="cost in USD")
    maker.add_argument("--artifact", action="append", default=[], help="key=value (repeatable)")
    checker = roles.add_parser("checker", help="report a checker's verdict")
    checker.add_argument("--verdict", required=True, choices=["pass", "fail", "inconclusive"])
    checker.add_argument("--reason", action="append", default=[], help="why (repeatable)")
    checker.add_argument("--score", type=float)
    checker.add_argument("--tokens", type=int, default=0)
    checker.add_argument("--cost", type=float, default=0.0, help="cost in USD")
    for p in (maker, checker):
        p.add_argument("--path", default=os.environ.get("KLOOP_RESULT_PATH", DEFAULT_PATH))
    workspace.add_parser(sub)
    return parser


def _say(message: str) -> None:
    print(f"kloop-agent: {message}", file=sys.stderr, flush=True)


def _harness(args: argparse.Namespace, command: list[str]) -> Harness:
    if args.harness == "command":
        return CommandHarness(command, timeout=args.timeout)
    if not args.model:
        raise SystemExit("kloop-agent run --harness openai needs --model (or $KLOOP_MODEL)")
    from kloop.kit.chat import ChatHarness  # the openai SDK only when it is used

    return ChatHarness(
        model=args.model,
        base_url=args.base_url,
        api_key=os.environ.get("OPENAI_API_KEY"),
        role=args.role,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        timeout=args.timeout,
        response_format=args.response_format,
    )


def run(args: argparse.Namespace, command: list[str]) -> int:
    """``kloop-agent run``: exit 0 with a result written (an InvalidAgentOutput error included).

    Exit 1 when the harness could not be asked: the reason is written instead of a result, so the
    run's message shows it.
    """
    if args.role not in ("maker", "checker"):
        raise SystemExit(f"kloop-agent run is for makers and checkers: --role {args.role}")
    if args.attempts < 1:
        raise SystemExit("--attempts must be at least 1")
    if args.harness == "command" and not command:
        raise SystemExit("--harness command needs the agent's command after --")
    inputs = read_inputs(args.role, root=Path(args.kloop_dir))
    if args.print_prompt:
        prompt = build_prompt(inputs, answer_schema(args.role))
        print(f"{prompt.system}\n\n{prompt.user}")
        return 0
    try:
        result = run_turn(
            inputs, _harness(args, command), args.attempts, Prices.from_env(os.environ), _say
        )
    except HarnessFailed as err:
        _say(f"the {args.harness} harness failed: {err}")
        message = f"kloop-agent: {err}".encode()[:TERMINATION_MESSAGE_LIMIT]  # a limit in bytes
        Path(args.path).write_bytes(message.decode(errors="ignore").encode())
        return 1
    text = _fit(result)
    _say(f"result: {text}")
    Path(args.path).write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Validate and write one result; exit 2 with the reason when it does not validate."""
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run(args, command)
    if args.command == "workspace":
        return workspace.run(args)
    try:
        result: BaseModel
        if args.role == "maker":
            result = MakerResult(
                outcome=args.outcome,
                summary=args.summary,
                tokens=args.tokens,
                cost_usd=args.cost,
                artifacts=_artifacts(args.artifact),
            )
        else:
            result = CheckerResult(
                verdict=args.verdict,
                reasons=args.reason,
                score=args.score,
                tokens=args.tokens,
                cost_usd=args.cost,
            )
    except ValidationError as err:
        print(f"kloop-agent: invalid result: {err}", file=sys.stderr)
        return 2
    Path(args.path).write_text(_fit(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
