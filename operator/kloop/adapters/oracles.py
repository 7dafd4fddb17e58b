"""HTTP oracles: query, extract the value, apply the pass condition (httpx, bounded retries).

An oracle that cannot answer (unreachable, not JSON, value missing) gives an *inconclusive*
verdict with the reason: the iteration does not pass, the next one retries, and the iteration
cap bounds it — one monitoring outage does not fail a whole run.
"""

from __future__ import annotations

import asyncio

import httpx

from kloop.api.loop import HttpOracle
from kloop.core.model import OracleOutcome
from kloop.core.oracle import OracleError, extract, passes

ATTEMPTS = 3


async def evaluate(oracle: HttpOracle) -> OracleOutcome:
    """Ask the oracle; transport errors are retried, then reported as an error verdict."""
    last_error = ""
    for attempt in range(ATTEMPTS):
        try:
            async with httpx.AsyncClient(timeout=oracle.timeout_seconds) as http:
                response = await http.request(oracle.method.value, oracle.url, content=oracle.body)
            response.raise_for_status()
            value = extract(response.json(), oracle.json_path)
            ok = passes(value, oracle.pass_if)
            reason = f"{oracle.json_path} = {value!r}; passIf {oracle.pass_if!r}: {ok}"
            return OracleOutcome("pass" if ok else "fail", [reason], str(value))
        except OracleError as err:
            return OracleOutcome("inconclusive", [f"oracle {oracle.url}: {err}"])
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as err:
            last_error = f"{type(err).__name__}: {err}"
            await asyncio.sleep(0.5 * (attempt + 1))
    return OracleOutcome(
        "inconclusive", [f"oracle {oracle.url} failed {ATTEMPTS} times: {last_error}"]
    )
