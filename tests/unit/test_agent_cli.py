from __future__ import annotations

from pathlib import Path

import pytest

from kloop.api.results import parse_checker_result, parse_maker_result
from kloop.cli.agent import main

pytestmark = pytest.mark.unit


def test_maker_report_is_what_the_operator_parses(tmp_path: Path) -> None:
    out = tmp_path / "result"
    code = main(
        [
            "report",
            "maker",
            "--outcome",
            "changed",
            "--summary",
            "fixed it",
            "--tokens",
            "12",
            "--cost",
            "0.5",
            "--artifact",
            "pr=42",
            "--path",
            str(out),
        ]
    )
    assert code == 0
    result = parse_maker_result(out.read_text())
    assert (result.summary, result.tokens, result.cost_usd) == ("fixed it", 12, 0.5)
    assert result.artifacts == {"pr": "42"}


def test_checker_report_with_reasons(tmp_path: Path) -> None:
    out = tmp_path / "result"
    main(
        [
            "report",
            "checker",
            "--verdict",
            "fail",
            "--reason",
            "a",
            "--reason",
            "b",
            "--path",
            str(out),
        ]
    )
    assert parse_checker_result(out.read_text()).reasons == ["a", "b"]


def test_long_results_are_trimmed_to_the_termination_message_limit(tmp_path: Path) -> None:
    out = tmp_path / "result"
    reasons = [arg for i in range(20) for arg in ("--reason", f"{i} " + "x" * 1000)]
    main(["report", "checker", "--verdict", "fail", *reasons, "--path", str(out)])
    text = out.read_text()
    assert len(text.encode()) <= 4096
    assert parse_checker_result(text).reasons[0].startswith("0 ")


def test_invalid_values_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["report", "maker", "--outcome", "changed", "--tokens", "-3", "--path", str(tmp_path / "r")]
    )
    assert code == 2
    assert "tokens" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
