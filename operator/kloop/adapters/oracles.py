"""HTTP oracles: query through the egress guard, extract the value, apply the pass condition.

Verdicts (docs/security.md):

- ``error`` (the run fails, reason ``OracleRefused``): the query breaks the egress policy — a
  refused address, a redirect to another host, an answer over the size cap, an invalid URL.
  Retrying cannot fix these; the Loop must change.
- ``inconclusive``: the oracle cannot answer now — no answer within ``timeoutSeconds`` (one
  deadline for the whole query: resolution, connections, every read, retries), connection
  refused, an HTTP error status, not JSON, value missing. Unless another grader failed (then the
  maker iterates), the stage pauses until a human resumes or aborts the run (docs/fleet.md): a
  monitoring outage neither fails a run nor passes it.

URLs in reasons and logs are redacted (userinfo, secret-looking parameters); values echoed from
the answer are clipped.
"""

from __future__ import annotations

import asyncio
import json
import logging

from kloop.adapters.egress import EgressGuard, Refused, Unavailable
from kloop.api.conditions import Reason
from kloop.api.loop import HttpOracle
from kloop.core.egress import redact_url
from kloop.core.model import OracleOutcome
from kloop.core.oracle import OracleError, clip, extract, passes

log = logging.getLogger("kloop.oracles")

ATTEMPTS = 3


def _transient(status: int) -> bool:
    return status >= 500 or status == 429


async def _ask(oracle: HttpOracle, guard: EgressGuard, where: str) -> OracleOutcome:
    """Up to ATTEMPTS queries; transport errors and 5xx/429 are retried after a short pause."""
    last_error = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(0.5 * attempt)
        try:
            answer = await guard.fetch(oracle.method.value, oracle.url, oracle.body)
        except Refused as err:
            return OracleOutcome(
                "error", [f"oracle {where}: {err}"], error_reason=Reason.ORACLE_REFUSED.value
            )
        except Unavailable as err:
            last_error = str(err)
            continue
        if _transient(answer.status):
            last_error = f"HTTP {answer.status}"
            continue
        if not 200 <= answer.status < 300:
            return OracleOutcome("inconclusive", [f"oracle {where}: HTTP {answer.status}"])
        try:
            document = json.loads(answer.body)
        except (ValueError, RecursionError):
            return OracleOutcome("inconclusive", [f"oracle {where}: the answer is not JSON"])
        try:
            value = extract(document, oracle.json_path)
            ok = passes(value, oracle.pass_if)
        except OracleError as err:
            return OracleOutcome("inconclusive", [f"oracle {where}: {err}"])
        shown = clip(repr(value))
        reason = f"{oracle.json_path} = {shown}; passIf {oracle.pass_if!r}: {ok}"
        return OracleOutcome("pass" if ok else "fail", [reason], clip(str(value)))
    return OracleOutcome(
        "inconclusive", [f"oracle {where} failed {ATTEMPTS} times: {clip(last_error)}"]
    )


async def evaluate(oracle: HttpOracle, guard: EgressGuard) -> OracleOutcome:
    """Ask the oracle within its ``timeoutSeconds``, all attempts included."""
    where = redact_url(oracle.url)
    try:
        async with asyncio.timeout(oracle.timeout_seconds):
            outcome = await _ask(oracle, guard, where)
    except TimeoutError:
        outcome = OracleOutcome(
            "inconclusive", [f"oracle {where}: no answer within {oracle.timeout_seconds}s"]
        )
    log.info(
        "oracle answered",
        extra={"url": where, "verdict": outcome.verdict, "why": "; ".join(outcome.reasons)},
    )
    return outcome
