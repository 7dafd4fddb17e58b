"""``kloop-agent``: what agents and checkers call to hand a valid result to the operator.

    kloop-agent report maker --outcome changed --summary "fixed the test" --tokens 1200
    kloop-agent report checker --verdict fail --reason "test_login still flaky"
    kloop-agent workspace clone|push   (kloop's own containers; see kloop.cli.workspace)

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

from pydantic import BaseModel, ValidationError

from kloop.api.results import TERMINATION_MESSAGE_LIMIT, CheckerResult, MakerResult
from kloop.cli import workspace

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


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one ``report`` command with a maker and a checker form."""
    parser = argparse.ArgumentParser(prog="kloop-agent", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
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


def main(argv: list[str] | None = None) -> int:
    """Validate and write one result; exit 2 with the reason when it does not validate."""
    args = build_parser().parse_args(argv)
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
