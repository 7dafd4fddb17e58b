"""Bad input is rejected by the real apiserver at admission, with a message a user understands.

Each case mutates a valid Loop (or LoopRun) and expects the apiserver to refuse it with a message
containing the given text; afterwards the object must not exist (nothing is partially created).
Requests use strict field validation, as ``kubectl apply`` does by default.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
Doc = dict[str, Any]


def _valid_loop() -> Doc:
    docs = list(yaml.safe_load_all((EXAMPLES / "single-cluster-loop.yaml").read_text()))
    loop: Doc = docs[0]
    loop["metadata"] = {"name": "bad"}
    return loop


def _valid_run() -> Doc:
    return {
        "apiVersion": "kloop.dev/v1alpha1",
        "kind": "LoopRun",
        "metadata": {"name": "bad"},
        "spec": {"loopRef": {"name": "some-loop"}},
    }


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _delete(path: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]

    return mutate


def _checker_is_maker(doc: Doc) -> None:
    doc["spec"]["checkers"][0]["template"] = copy.deepcopy(doc["spec"]["maker"]["template"])


def _checker_same_image_command_args(doc: Doc) -> None:
    maker = doc["spec"]["maker"]["template"]["spec"]["containers"][0]
    checker = doc["spec"]["checkers"][0]["template"]["spec"]["containers"][0]
    checker.update(image=maker["image"], command=maker["command"], args=maker["args"])
    checker["name"] = "another-name"  # a different container name does not make it another agent


def _stages(*stages: Doc) -> Callable[[Doc], None]:
    return _set("spec.stages", list(stages))


def _many_checkers(doc: Doc) -> None:
    base = doc["spec"]["checkers"][0]
    doc["spec"]["checkers"] = [{**copy.deepcopy(base), "name": f"c{i}"} for i in range(17)]


LOOP_CASES: list[tuple[str, Callable[[Doc], None], str]] = [
    ("goal missing", _delete("spec.goal"), "spec.goal: Required value"),
    ("goal empty", _set("spec.goal", ""), "spec.goal: Invalid value"),
    ("goal not a string", _set("spec.goal", 42), "spec.goal in body must be of type string"),
    ("goal huge", _set("spec.goal", "x" * 20000), "spec.goal: Too long"),
    ("maker missing", _delete("spec.maker"), "spec.maker: Required value"),
    (
        "maker without containers",
        _set("spec.maker.template.spec.containers", []),
        "spec.maker.template.spec.containers: Invalid value",
    ),
    (
        "maker image empty",
        _set("spec.maker.template.spec.containers.0.image", ""),
        "spec.maker.template.spec.containers[0].image",
    ),
    ("checkers missing", _delete("spec.checkers"), "spec.checkers: Required value"),
    ("checkers empty", _set("spec.checkers", []), "spec.checkers: Invalid value"),
    ("too many checkers", _many_checkers, "spec.checkers: Too many"),
    ("checker identical to maker", _checker_is_maker, "must differ from the maker"),
    (
        "checker with the maker's image, command and args",
        _checker_same_image_command_args,
        "must differ from the maker",
    ),
    (
        "duplicate checker names",
        lambda d: d["spec"]["checkers"].append(copy.deepcopy(d["spec"]["checkers"][0])),
        "checker names must be unique",
    ),
    (
        "checker name not a DNS label",
        _set("spec.checkers.0.name", "Tests_1"),
        "spec.checkers[0].name in body should match",
    ),
    (
        "checker kind unknown",
        _set("spec.checkers.0.kind", "shell"),
        'spec.checkers[0].kind: Unsupported value: "shell"',
    ),
    ("http checker without http", _set("spec.checkers.0.kind", "http"), "kind http needs http"),
    (
        "pod checker without template",
        _delete("spec.checkers.0.template"),
        "a checker of kind pod needs template",
    ),
    (
        "http passIf without operator",
        _set(
            "spec.checkers.0",
            {
                "name": "rate",
                "kind": "http",
                "http": {"url": "http://prom:9090/q", "jsonPath": "$.v", "passIf": "about 3"},
            },
        ),
        "spec.checkers[0].http.passIf in body should match",
    ),
    (
        "http url not http",
        _set(
            "spec.checkers.0",
            {
                "name": "rate",
                "kind": "http",
                "http": {"url": "ftp://x", "jsonPath": "$.v", "passIf": "< 3"},
            },
        ),
        "spec.checkers[0].http.url in body should match",
    ),
    (
        "negative maxIterations",
        _set("spec.budget.maxIterations", -1),
        "spec.budget.maxIterations: Invalid value: -1: spec.budget.maxIterations in body should be"
        " greater than or equal to 1",
    ),
    ("zero maxIterations", _set("spec.budget.maxIterations", 0), "spec.budget.maxIterations"),
    (
        "maxIterations not a number",
        _set("spec.budget.maxIterations", "five"),
        "spec.budget.maxIterations in body must be of type integer",
    ),
    ("negative maxTokens", _set("spec.budget.maxTokens", -100), "spec.budget.maxTokens"),
    (
        "zero maxCostUSD",
        _set("spec.budget.maxCostUSD", 0),
        "spec.budget.maxCostUSD in body should be greater than 0",
    ),
    ("negative deadline", _set("spec.budget.deadlineSeconds", -5), "spec.budget.deadlineSeconds"),
    ("maker timeout zero", _set("spec.maker.timeoutSeconds", 0), "spec.maker.timeoutSeconds"),
    (
        "memory over the object limit",
        _set("spec.memory.maxBytes", 2 * 1024 * 1024),
        "spec.memory.maxBytes",
    ),
    (
        "duplicate connector names",
        _set(
            "spec.connectors",
            [{"name": "tracker", "mcp": {"url": f"http://h{i}/mcp"}} for i in range(2)],
        ),
        "connector names must be unique",
    ),
    (
        "duplicate stage names",
        _stages({"name": "canary", "clusters": ["a"]}, {"name": "canary", "clusters": ["b"]}),
        "stage names must be unique",
    ),
    (
        "stage with clusters and clusterSelector",
        _stages({"name": "s", "clusters": ["a"], "clusterSelector": {"matchLabels": {"t": "p"}}}),
        "a stage needs exactly one of clusterSelector or clusters",
    ),
    (
        "stage with no target",
        _stages({"name": "s"}),
        "a stage needs exactly one of clusterSelector or clusters",
    ),
    (
        "stage name with spaces",
        _stages({"name": "my stage", "clusters": ["a"]}),
        "spec.stages[0].name in body should match",
    ),
    (
        "schedule with minute 61",
        _set("spec.schedule", "61 * * * *"),
        "schedule must be a cron expression",
    ),
    (
        "schedule in words",
        _set("spec.schedule", "every day at six"),
        "schedule must be a cron expression",
    ),
    (
        "schedule with six fields",
        _set("spec.schedule", "0 0 6 * * 1-5"),
        "schedule must be a cron expression",
    ),
    (
        "concurrencyPolicy unknown",
        _set("spec.concurrencyPolicy", "Sometimes"),
        'spec.concurrencyPolicy: Unsupported value: "Sometimes"',
    ),
    ("unknown field in spec", _set("spec.bogus", True), 'unknown field "spec.bogus"'),
    (
        "unknown field in budget",
        _set("spec.budget.maxDollars", 3),
        'unknown field "spec.budget.maxDollars"',
    ),
    (
        "notify without events",
        _set(
            "spec.notify",
            [{"name": "oncall", "urlSecretRef": {"name": "hook", "key": "url"}, "events": []}],
        ),
        "spec.notify[0].events",
    ),
    (
        "notify event unknown",
        _set(
            "spec.notify",
            [
                {
                    "name": "oncall",
                    "urlSecretRef": {"name": "hook", "key": "url"},
                    "events": ["boom"],
                }
            ],
        ),
        'Unsupported value: "boom"',
    ),
]

RUN_CASES: list[tuple[str, Callable[[Doc], None], str]] = [
    ("run without loopRef", _delete("spec.loopRef"), "spec.loopRef: Required value"),
    (
        "run with negative budget",
        _set("spec.budget", {"maxIterations": -2}),
        "spec.budget.maxIterations",
    ),
    (
        "run with loopRef name invalid",
        _set("spec.loopRef.name", "Not_A_Name"),
        "spec.loopRef.name in body should match",
    ),
]


def _create(api: client.CustomObjectsApi, namespace: str, plural: str, body: Doc) -> None:
    api.create_namespaced_custom_object(
        "kloop.dev", "v1alpha1", namespace, plural, body, field_validation="Strict"
    )


def _assert_absent(api: client.CustomObjectsApi, namespace: str, plural: str) -> None:
    with pytest.raises(ApiException) as missing:
        api.get_namespaced_custom_object("kloop.dev", "v1alpha1", namespace, plural, "bad")
    assert missing.value.status == 404


def _rejection(err: ApiException) -> str:
    return str(json.loads(err.body).get("message", err.body))


CASES = [
    pytest.param("loops", _valid_loop, mutate, expected, id=case)
    for case, mutate, expected in LOOP_CASES
] + [
    pytest.param("loopruns", _valid_run, mutate, expected, id=case)
    for case, mutate, expected in RUN_CASES
]


@pytest.mark.parametrize(("plural", "valid", "mutate", "expected"), CASES)
def test_bad_input_is_rejected_at_admission_with_a_clear_message(
    api_client: client.ApiClient,
    kloop_crds: list[str],
    namespace: str,
    plural: str,
    valid: Callable[[], Doc],
    mutate: Callable[[Doc], None],
    expected: str,
) -> None:
    api = client.CustomObjectsApi(api_client)
    body = valid()
    mutate(body)
    with pytest.raises(ApiException) as rejected:
        _create(api, namespace, plural, body)
    assert rejected.value.status in (400, 422), rejected.value.body
    assert expected in _rejection(rejected.value), _rejection(rejected.value)
    _assert_absent(api, namespace, plural)


def test_the_valid_base_loop_is_accepted_so_the_catalogue_tests_one_fault_each(
    api_client: client.ApiClient, kloop_crds: list[str], namespace: str
) -> None:
    api = client.CustomObjectsApi(api_client)
    _create(api, namespace, "loops", _valid_loop())
    _create(api, namespace, "loopruns", _valid_run())
    got = api.get_namespaced_custom_object("kloop.dev", "v1alpha1", namespace, "loops", "bad")
    assert got["spec"]["memory"]["keepIterations"] == 10
    assert got["spec"]["concurrencyPolicy"] == "Forbid", "defaults come from the CRD schema"


@pytest.mark.parametrize(("plural", "valid"), [("loopruns", _valid_run), ("loops", _valid_loop)])
def test_trust_8_names_too_long_for_pod_labels_are_refused_at_admission(
    api_client: client.ApiClient,
    kloop_crds: list[str],
    namespace: str,
    plural: str,
    valid: Callable[[], Doc],
) -> None:
    api = client.CustomObjectsApi(api_client)
    body = valid()
    body["metadata"] = {"name": "r" * 64}
    with pytest.raises(ApiException) as rejected:
        _create(api, namespace, plural, body)
    assert rejected.value.status == 422, rejected.value.body
    assert "at most 63 characters" in _rejection(rejected.value)
    body["metadata"] = {"name": "r" * 63}
    _create(api, namespace, plural, body)  # the limit itself is fine
