from __future__ import annotations

import json

import pytest

from kloop.core.memory import append_entry, empty_log, render_markdown, rendered_size
from kloop.core.oracle import OracleError, extract, passes

pytestmark = pytest.mark.unit


def entry(i: int, passed: bool, reason: str = "broken") -> dict[str, object]:
    return {
        "run": "r",
        "runUid": "u1",
        "iteration": i,
        "stage": "default",
        "cluster": "local",
        "maker": {"outcome": "changed", "summary": f"attempt {i}"},
        "verdicts": [
            {
                "checker": "t",
                "verdict": "pass" if passed else "fail",
                "reasons": [] if passed else [reason],
            }
        ],
        "decision": "succeed" if passed else "iterate",
        "why": "",
        "at": "2026-01-01T00:00:00Z",
    }


def test_markdown_has_done_next_and_tried_sections() -> None:
    log = empty_log()
    log = append_entry(log, entry(1, False, "missing comma"), 10, 100_000, "l", "greet")
    md = render_markdown(log, "l", "greet")
    assert "## Done\n- nothing yet" in md
    assert "## Next\n- t: missing comma" in md
    assert "## Tried and failed\n- r iteration 1: attempt 1 — missing comma" in md
    log = append_entry(log, entry(2, True), 10, 100_000, "l", "greet")
    md = render_markdown(log, "l", "greet")
    assert "- r iteration 2: attempt 2 (all checks passed)" in md
    assert "the last iteration passed every check" in md


def test_append_is_idempotent() -> None:
    log = append_entry(empty_log(), entry(1, False), 10, 100_000, "l", "g")
    assert append_entry(log, entry(1, False), 10, 100_000, "l", "g") == log


def test_old_entries_are_compacted_beyond_keep() -> None:
    log = empty_log()
    for i in range(1, 8):
        log = append_entry(log, entry(i, False, f"reason {i}"), 3, 100_000, "l", "g")
    assert [e["iteration"] for e in log["entries"]] == [5, 6, 7]
    assert log["summary"]["compacted"] == 4
    assert log["summary"]["failed"] == 4
    assert "reason 4" in log["summary"]["lastFailures"][-1]
    assert "## Earlier (compacted)" in render_markdown(log, "l", "g")


def test_compaction_keeps_the_memory_under_max_bytes() -> None:
    log = empty_log()
    for i in range(1, 40):
        log = append_entry(log, entry(i, False, "x" * 500), 100, 8_000, "l", "g")
        assert rendered_size(log, "l", "g") <= 8_000
    assert log["summary"]["compacted"] > 0
    json.dumps(log)


@pytest.mark.parametrize(
    ("doc", "path", "value"),
    [
        ({"data": {"result": [{"value": [1, "0.003"]}]}}, "$.data.result[0].value[1]", "0.003"),
        ({"a": {"b-c": 2}}, "$.a['b-c']", 2),
        ([5, 6], "$[1]", 6),
    ],
)
def test_json_path_extraction(doc: object, path: str, value: object) -> None:
    assert extract(doc, path) == value


def test_json_path_missing_value_is_an_error() -> None:
    with pytest.raises(OracleError, match="not found"):
        extract({"data": {"result": []}}, "$.data.result[0].value")


@pytest.mark.parametrize(
    ("value", "condition", "ok"),
    [
        ("0.003", "< 0.01", True),
        (0.5, "< 0.01", False),
        (3, ">= 3", True),
        ("ok", "== ok", True),
        ("ok", "== 'ok'", True),
        ("bad", "!= ok", True),
    ],
)
def test_pass_conditions(value: object, condition: str, ok: bool) -> None:
    assert passes(value, condition) is ok


def test_ordering_a_string_is_an_error() -> None:
    with pytest.raises(OracleError):
        passes("green", "< 3")


def test_compacted_iterations_still_count_as_appended() -> None:
    log = empty_log()
    for i in range(1, 6):
        log = append_entry(log, entry(i, False), 2, 100_000, "l", "g")
    assert [e["iteration"] for e in log["entries"]] == [4, 5]
    again = append_entry(log, entry(1, False), 2, 100_000, "l", "g")
    assert again == log, "iteration 1 was compacted, not lost: it must not be appended again"
