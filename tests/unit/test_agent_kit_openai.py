"""``kloop-agent run --harness openai`` against a tiny OpenAI-compatible server started here.

The real ``openai`` SDK talks real HTTP to it; the server answers from a script and records what
it was asked, so the request (schema, retry messages, key) and the usage accounting are checked
end to end without a model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kloop.api.results import parse_checker_result
from kloop.cli.agent import main
from kloop.kit.answers import answer_schema

pytestmark = pytest.mark.unit


class Script:
    """Replies to serve in order (status, body) and the requests received."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, dict[str, Any]]] = []
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []


def completion(content: str, finish: str = "stop", prompt: int = 100, out: int = 20) -> Any:
    return (
        200,
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "tiny",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": out,
                "total_tokens": prompt + out,
                "prompt_tokens_details": {"cached_tokens": 40},
            },
        },
    )


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status, reply = script.replies.pop(0)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def judge(tmp_path: Path, base_url: str, *args: str) -> tuple[int, str]:
    out = tmp_path / "result"
    code = main(["run", "--role", "checker", "--harness", "openai", "--model", "tiny",
                 "--base-url", base_url, "--kloop-dir", str(tmp_path), "--path", str(out),
                 *args])  # fmt: skip
    return code, out.read_text()


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLOOP_GOAL", "the greeting says hello")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("KLOOP_PRICE_INPUT_USD_PER_MTOK", "1000")
    monkeypatch.setenv("KLOOP_PRICE_OUTPUT_USD_PER_MTOK", "2000")
    monkeypatch.setenv("KLOOP_PRICE_CACHED_INPUT_USD_PER_MTOK", "100")


def test_a_cut_answer_is_retried_and_the_valid_one_reported_with_all_usage(
    tmp_path: Path, server: tuple[str, Script]
) -> None:
    url, script = server
    verdict = '{"verdict": "fail", "reasons": ["greeting.txt says helo"], "score": 0.1}'
    script.replies = [completion('{"verdict": "fa', "length"), completion(verdict)]
    code, text = judge(tmp_path, url, "--max-tokens", "64")
    assert code == 0
    result = parse_checker_result(text)
    assert (result.verdict, result.reasons, result.error) == (
        "fail",
        ["greeting.txt says helo"],
        None,
    )
    assert result.tokens == 240
    # per attempt: 60 uncached + 40 cached input tokens, 20 output tokens
    assert result.cost_usd == pytest.approx(2 * (60 * 1000 + 40 * 100 + 20 * 2000) / 1e6)
    (headers, first), (_, second) = script.requests
    assert headers["authorization"] == "Bearer sk-test"
    assert first["model"] == "tiny" and first["max_tokens"] == 64
    assert first["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "kloop_checker_answer", "schema": answer_schema("checker"),
                        "strict": True},
    }  # fmt: skip
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert "the greeting says hello" in first["messages"][1]["content"]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][2]["content"] == '{"verdict": "fa'
    assert "cut at max_tokens" in second["messages"][3]["content"]


def test_no_valid_answer_after_the_attempts_is_invalid_agent_output(
    tmp_path: Path, server: tuple[str, Script]
) -> None:
    url, script = server
    script.replies = [completion("{", "length"), completion('{"verdict": "maybe"}')]
    code, text = judge(tmp_path, url, "--attempts", "2")
    assert code == 0
    result = parse_checker_result(text)
    assert result.error is not None and result.error.reason == "InvalidAgentOutput"
    assert "2 attempt(s)" in result.error.message
    assert result.tokens == 240 and len(script.requests) == 2


def test_an_endpoint_error_fails_the_pod_with_the_reason(
    tmp_path: Path, server: tuple[str, Script]
) -> None:
    url, script = server
    script.replies = [(400, {"error": {"message": "model tiny does not exist", "type": "x"}})]
    code, text = judge(tmp_path, url)
    assert code == 1
    assert text.startswith("kloop-agent: ") and "model tiny does not exist" in text


def test_json_object_format_sends_the_schema_the_way_llama_cpp_python_takes_it(
    tmp_path: Path, server: tuple[str, Script]
) -> None:
    url, script = server
    script.replies = [completion('{"verdict": "pass", "reasons": ["ok"], "score": null}')]
    code, text = judge(tmp_path, url, "--response-format", "json_object")
    assert code == 0 and parse_checker_result(text).verdict == "pass"
    ((_, body),) = script.requests
    assert body["response_format"] == {"type": "json_object", "schema": answer_schema("checker")}
