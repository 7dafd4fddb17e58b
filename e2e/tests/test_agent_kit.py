"""The agent kit with a real model: ``kloop-agent run`` in the kit image as a loop's checker.

SmolLM2-135M (e2e/llm.py) serves an OpenAI-compatible endpoint on the pods' bridge address;
the checker pod builds its prompt from the contract, asks it with the answer constrained to
the verdict's JSON schema, and reports the model's own usage, which the run counts and prices.
Then the failure path: answers cut by a tiny ``max_tokens`` and a command agent printing garbage
are retried and end as ``InvalidAgentOutput``.

Serial by design: one llama.cpp server on 2 shared cores.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e import llm
from e2e.cluster import images, kit, local
from e2e.fixtures import using_external_cluster
from e2e.helpers import wait_for
from e2e.loops import create_loop, get_run, run_pods, start_run, wait_finished
from e2e.operator_process import RunningOperator

pytestmark = pytest.mark.e2e

PRICE = 1000.0
"""USD per million tokens, input and output alike: the cost is exactly tokens / 1000."""

LLAMA_CPP_PYTHON = ["--response-format", "json_object"]
"""llama-cpp-python's server wants the schema as ``json_object`` + ``schema``."""

MAKER = (
    "printf '%s' 'hello, world' > /tmp/greeting.txt; printf '%s' "
    """'{"v":1,"outcome":"changed","summary":"wrote greeting.txt: hello, world"}'"""
    " > /dev/termination-log"
)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[llm.Endpoint]:
    """SmolLM2 on 10.88.0.1 for this module (built once and cached: ~6 min cold)."""
    with llm.serve(tmp_path_factory.mktemp("llm") / "server.log") as served:
        yield served


@pytest.fixture(scope="module")
def kit_ref(cluster: Path) -> str:
    """The kit image built from this checkout, imported and tagged by its build digest.

    Other checkouts may import their own ``kloop-kit:<version>`` into the shared node at any
    time; the digest tag keeps this module's pods on the image built from this code.
    """
    if using_external_cluster():
        pytest.skip("needs the local node: the kit is imported into its containerd")
    tarball = kit.build_kit_image()
    images.import_image(str(local.CONTAINERD_SOCKET), tarball)
    ref = f"{kit.kit_image()}-{tarball.stem.rsplit('-', 1)[-1][:12]}"
    subprocess.run(
        ["ctr", "--address", str(local.CONTAINERD_SOCKET), "-n", "k8s.io",
         "images", "tag", "--force", kit.kit_image(), ref],
        check=True, capture_output=True,
    )  # fmt: skip
    return ref


def kit_container(image: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    return {
        "name": "agent",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["kloop-agent", "run", "--role", "checker", *args],
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }


def judge_loop(name: str, checkers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "kloop.dev/v1alpha1",
        "kind": "Loop",
        "metadata": {"name": name},
        "spec": {
            "goal": 'Make greeting.txt say exactly "hello, world".',
            "maker": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "agent",
                                "image": kit.kit_image(),
                                "imagePullPolicy": "Never",
                                "command": ["sh", "-c", MAKER],
                            }
                        ]
                    }
                },
            },  # fmt: skip
            "checkers": checkers,
            "budget": {"maxIterations": 1},
            "pricing": {"inputUSDPerMTok": PRICE, "outputUSDPerMTok": PRICE},
        },
    }


def checker(name: str, container: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "timeoutSeconds": 300, "template": {"spec": {"containers": [container]}}}


def first_checker_record(api: client.ApiClient, namespace: str, run: str) -> dict[str, Any]:
    """The iteration's checker record once there (an inconclusive verdict pauses the run)."""

    def recorded() -> dict[str, Any] | None:
        status = get_run(api, namespace, run).get("status") or {}
        records = (status.get("iterations") or [{}])[0].get("checkers") or []
        return records[0] if records else None

    found: dict[str, Any] = wait_for(f"{run}'s verdict", recorded, timeout=360, every=2)
    return found


def pod_log(api: client.ApiClient, namespace: str, run: str, role: str) -> str:
    pods = [p for p in run_pods(api, namespace, run) if p.metadata.labels["kloop.dev/role"] == role]
    assert pods, f"no {role} pod of {run}"
    return str(client.CoreV1Api(api).read_namespaced_pod_log(pods[0].metadata.name, namespace))


def test_llm_judge_returns_a_schema_valid_verdict_with_real_usage_counted_and_priced(
    api_client: client.ApiClient,
    namespace: str,
    operator: RunningOperator,
    endpoint: llm.Endpoint,
    kit_ref: str,
) -> None:
    env = {"OPENAI_BASE_URL": endpoint.base_url, "KLOOP_MODEL": endpoint.model}
    args = ["--harness", "openai", *LLAMA_CPP_PYTHON, "--max-tokens", "256", "--temperature", "0"]
    loop = judge_loop("judged", [checker("judge", kit_container(kit_ref, args, env))])
    create_loop(api_client, namespace, loop)
    before = endpoint.requests()
    started = time.monotonic()
    start_run(api_client, namespace, "judged", "judged-1")
    record = first_checker_record(api_client, namespace, "judged-1")
    print(f"verdict after {time.monotonic() - started:.0f}s: {record}")
    log = pod_log(api_client, namespace, "judged-1", "checker")
    assert record["verdict"] in ("pass", "fail", "inconclusive"), (record, log)
    assert "errorReason" not in record
    # the model's own usage: a prompt of goal, instructions, maker's claim and schema is
    # hundreds of tokens; the server answered at least one completion for it
    assert record["tokens"] >= 200, record
    assert endpoint.requests() > before
    assert "kloop-agent: result: " in log and '"verdict"' in log
    status = get_run(api_client, namespace, "judged-1")["status"]
    assert status["usage"]["tokens"] == record["tokens"], "the maker reported none"
    assert status["usage"]["costUSD"] == pytest.approx(record["tokens"] * PRICE / 1e6)
    assert record["costUSD"] == pytest.approx(record["tokens"] * PRICE / 1e6)


def test_invalid_model_output_is_retried_then_reported_as_invalid_agent_output(
    api_client: client.ApiClient,
    namespace: str,
    operator: RunningOperator,
    endpoint: llm.Endpoint,
    kit_ref: str,
) -> None:
    env = {"OPENAI_BASE_URL": endpoint.base_url, "KLOOP_MODEL": endpoint.model}
    cut = ["--harness", "openai", *LLAMA_CPP_PYTHON, "--max-tokens", "3", "--attempts", "2"]
    garbage = ["--harness", "command", "--attempts", "2", "--",
               "sh", "-c", "cat > /dev/null; echo 'looks fine to me'"]  # fmt: skip
    create_loop(
        api_client,
        namespace,
        judge_loop("cut", [checker("judge", kit_container(kit_ref, cut, env))]),
    )
    create_loop(
        api_client,
        namespace,
        judge_loop("garbage", [checker("judge", kit_container(kit_ref, garbage, {}))]),
    )
    before = endpoint.requests()
    start_run(api_client, namespace, "cut", "cut-1")
    start_run(api_client, namespace, "garbage", "garbage-1")
    for run, tokens_spent in (("cut-1", True), ("garbage-1", False)):
        status = wait_finished(api_client, namespace, run, timeout=360)["status"]
        log = pod_log(api_client, namespace, run, "checker")
        assert (status["phase"], status["haltReason"]) == ("Failed", "InvalidAgentOutput"), (
            status,
            log,
        )
        record = status["iterations"][0]["checkers"][0]
        assert (record["verdict"], record["errorReason"]) == ("error", "InvalidAgentOutput")
        assert "no valid answer in 2 attempt(s)" in record["reasons"][0]
        assert log.count("invalid answer") == 2, log
        assert "no valid answer" in (status.get("message") or ""), status
        if tokens_spent:  # two cut completions, both paid for and counted
            assert record["tokens"] > 0 and status["usage"]["tokens"] == record["tokens"]
            assert "cut at max_tokens" in record["reasons"][0]
        else:
            assert record.get("tokens", 0) == 0
    assert endpoint.requests() - before == 2
