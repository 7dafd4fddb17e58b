"""An OpenAI-compatible chat endpoint, through the official ``openai`` SDK.

The answer is constrained by the schema in ``response_format``: ``json_schema`` is OpenAI's
structured outputs (vLLM and llama.cpp's own server take it too); ``json_object`` with a
``schema`` is the form llama-cpp-python's server takes (it refuses ``json_schema``). Either way a
capable endpoint cannot answer outside the schema; the kit still validates, because not every
endpoint enforces it and a ``max_tokens`` cut leaves half an object.
"""

from __future__ import annotations

from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from kloop.kit.harness import HarnessFailed, Reply, Retry, retry_instructions
from kloop.kit.prompt import Prompt
from kloop.kit.usage import Usage, from_openai


class ChatHarness:
    """One chat completion per attempt; a retry shows the model its refused answer and why."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key: str | None,
        role: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        timeout: float = 600.0,
        sdk_retries: int = 2,
        response_format: str = "json_schema",
    ) -> None:
        # a local endpoint needs no key, but the SDK insists on one
        key = api_key or ("unused" if base_url else None)
        self.client = openai.OpenAI(
            base_url=base_url, api_key=key, timeout=timeout, max_retries=sdk_retries
        )
        self.model = model
        self.role = role
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.response_format = response_format

    def _response_format(self, schema: dict[str, Any]) -> Any:
        if self.response_format == "json_object":
            return {"type": "json_object", "schema": schema}
        name = f"kloop_{self.role}_answer"
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        }

    def ask(self, prompt: Prompt, schema: dict[str, Any], retry: Retry | None) -> Reply:
        """One completion; transport and HTTP errors (after the SDK's retries) fail the harness."""
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
        ]
        if retry is not None:
            messages += [
                {"role": "assistant", "content": retry.answer},
                {"role": "user", "content": retry_instructions(retry)},
            ]
        extra: dict[str, Any] = {}
        if self.max_tokens is not None:
            extra["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            extra["temperature"] = self.temperature
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                response_format=self._response_format(schema),
                **extra,
            )
        except openai.APIError as err:
            raise HarnessFailed(f"{self.client.base_url}: {type(err).__name__}: {err}") from err
        usage = Usage()
        if response.usage is not None:
            details = response.usage.prompt_tokens_details
            usage = from_openai(
                response.usage.prompt_tokens,
                response.usage.completion_tokens,
                (details.cached_tokens if details is not None else 0) or 0,
            )
        if not response.choices:
            return Reply("", usage, "the endpoint returned no choice")
        choice = response.choices[0]
        note = (
            "cut at max_tokens (finish_reason length)" if choice.finish_reason == "length" else ""
        )
        return Reply(choice.message.content or "", usage, note)
