"""One agent turn: prompt, ask (retrying invalid answers), and the result with its usage."""

from __future__ import annotations

from collections.abc import Callable

from kloop.api.results import AgentErrorReason
from kloop.kit.answers import (
    InvalidAnswer,
    Result,
    answer_schema,
    extract_json,
    failed_result,
    to_result,
)
from kloop.kit.harness import Harness, HarnessFailed, Retry
from kloop.kit.inputs import AgentInputs
from kloop.kit.prompt import build_prompt
from kloop.kit.usage import Prices, Usage, cost_usd


def run_turn(
    inputs: AgentInputs,
    harness: Harness,
    attempts: int,
    prices: Prices | None,
    log: Callable[[str], None] = lambda _: None,
) -> Result:
    """Ask up to ``attempts`` times; the first valid answer wins, else an InvalidAgentOutput error.

    Every attempt's usage is counted, the refused ones too: they were paid for.
    """
    role = inputs.role
    schema = answer_schema(role)
    prompt = build_prompt(inputs, schema)
    log(f"{role}: prompt of {len(prompt.system) + len(prompt.user)} characters")
    usage, retry = Usage(), None
    problem = "no attempt"
    for attempt in range(1, attempts + 1):
        try:
            reply = harness.ask(prompt, schema, retry)
        except HarnessFailed as err:
            if not usage.tokens:
                raise  # nothing spent: the pod fails, as any agent that could not start
            # earlier attempts were paid for: report them, or the run's budget undercounts
            message = f"the harness failed at attempt {attempt} of {attempts}: {err}"
            cost = cost_usd(usage, prices)
            return failed_result(role, message, usage.tokens, cost, AgentErrorReason.AGENT_FAILED)
        usage += reply.usage
        log(f"attempt {attempt} of {attempts}: {reply.usage.tokens} tokens")
        try:
            return to_result(role, extract_json(reply.text), usage.tokens, cost_usd(usage, prices))
        except InvalidAnswer as err:
            problem = f"{err} ({reply.note})" if reply.note else str(err)
            log(f"attempt {attempt} of {attempts}: invalid answer: {problem}")
            retry = Retry(reply.text, problem)
    message = f"no valid answer in {attempts} attempt(s); the last: {problem}"
    return failed_result(role, message, usage.tokens, cost_usd(usage, prices))
