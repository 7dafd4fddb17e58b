from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kloop.api.crdgen import build_crds, main, render
from kloop.api.cron import is_valid_cron
from kloop.api.loop import LoopSpec
from kloop.api.results import InvalidResult, parse_checker_result, parse_maker_result

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _example_spec() -> dict[str, Any]:
    docs = yaml.safe_load_all((ROOT / "docs/examples/single-cluster-loop.yaml").read_text())
    spec: dict[str, Any] = next(iter(docs))["spec"]
    return spec


def test_committed_crds_equal_what_the_models_generate() -> None:
    for directory in ("crds", "charts/kloop/crds"):
        generated = build_crds()
        on_disk = sorted(p.name for p in (ROOT / directory).glob("*.yaml"))
        assert on_disk == sorted(generated), f"{directory}/ has other files: run `make crds`"
        for name, crd in generated.items():
            committed = (ROOT / directory / name).read_text()
            assert committed == render(crd), f"{directory}/{name} is stale: run `make crds`"


def test_crdgen_writes_the_repository_and_the_chart_copies(tmp_path: Path) -> None:
    assert main([str(tmp_path / "crds")]) == 0
    for name, crd in build_crds().items():
        assert (tmp_path / "crds" / name).read_text() == render(crd)
        assert (tmp_path / "charts/kloop/crds" / name).read_text() == render(crd)


def test_crd_schema_is_structural_no_refs_titles_or_anyof() -> None:
    text = "".join(render(crd) for crd in build_crds().values())
    for forbidden in ("$ref", "anyOf", "title:", "additionalProperties: false"):
        assert forbidden not in text


def test_every_spec_field_has_a_description_for_kubectl_explain() -> None:
    def walk(node: dict[str, Any], path: str) -> list[str]:
        missing = []
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub:
                missing.append(f"{path}.{name}")
            missing += walk(sub, f"{path}.{name}")
            if "items" in sub:
                missing += walk(sub["items"], f"{path}.{name}[]")
        return missing

    for crd in build_crds().values():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert walk(schema, "spec") == []


@pytest.mark.parametrize(
    ("expression", "valid"),
    [
        ("0 6 * * 1-5", True),
        ("*/15 * * * *", True),
        ("0 0 1 JAN,JUL *", True),
        ("30 2 * * MON-FRI", True),
        ("@daily", True),
        ("59 23 31 12 7", True),
        ("60 * * * *", False),
        ("0 24 * * *", False),
        ("0 0 0 * *", False),
        ("* * * *", False),
        ("0 0 6 * * 1", False),
        ("*/0 * * * *", False),
        ("every day", False),
        (" 0 6 * * *", False),
    ],
)
def test_cron_expressions(expression: str, valid: bool) -> None:
    assert is_valid_cron(expression) is valid


def test_example_loop_parses_with_defaults() -> None:
    spec = LoopSpec.model_validate(_example_spec())
    assert spec.memory_config_map("fix-flaky-tests") == "fix-flaky-tests-memory"
    assert spec.budget.max_tokens == 400000
    assert spec.concurrency_policy == "Forbid"


def test_model_rejects_a_checker_that_is_the_maker_even_without_admission() -> None:
    spec = _example_spec()
    spec["checkers"][0]["template"] = copy.deepcopy(spec["maker"]["template"])
    with pytest.raises(ValidationError, match="must differ from the maker"):
        LoopSpec.model_validate(spec)


def test_model_rejects_duplicate_stage_names() -> None:
    spec = _example_spec()
    spec["stages"] = [{"name": "a", "clusters": ["x"]}, {"name": "a", "clusters": ["y"]}]
    with pytest.raises(ValidationError, match="stage names must be unique"):
        LoopSpec.model_validate(spec)


def test_maker_result_round_trip() -> None:
    result = parse_maker_result(
        '{"v":1,"outcome":"changed","summary":"s","tokens":5,"costUSD":0.1}'
    )
    assert (result.outcome, result.tokens, result.cost_usd) == ("changed", 5, 0.1)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ("", "wrote no result"),
        ("not json", "not valid JSON"),
        ('{"v":2,"outcome":"changed"}', "v:"),
        ('{"v":1,"outcome":"maybe"}', "outcome"),
        ('{"v":1,"outcome":"changed","tokens":-1}', "tokens"),
        ('{"v":1,"outcome":"changed","surprise":1}', "surprise"),
    ],
)
def test_invalid_maker_output_is_explained(message: str, why: str) -> None:
    with pytest.raises(InvalidResult, match=why):
        parse_maker_result(message)


def test_checker_result_requires_a_known_verdict() -> None:
    assert parse_checker_result('{"v":1,"verdict":"fail","reasons":["x"]}').reasons == ["x"]
    with pytest.raises(InvalidResult, match="verdict"):
        parse_checker_result('{"v":1,"verdict":"great"}')


def test_operator_directory_is_not_a_package_shadowing_the_stdlib() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
