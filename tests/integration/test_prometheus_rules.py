"""The alerts the chart ships: promtool passes, every alert is tested both ways.

promtool comes from Debian's ``prometheus`` package, which the harness installs when missing
(root, apt): so these tests sit with the integration tier rather than the pure unit tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from e2e.prometheus import promtool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/kloop/files/prometheus/rules.yaml"
CASES = Path(__file__).resolve().parent / "prometheus/rules_test.yaml"


def alerts() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_shipped_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_every_alert_behaves_as_its_promtool_cases_say() -> None:
    tested = promtool("test", "rules", CASES.name, cwd=CASES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_silent() -> None:
    cases = yaml.safe_load(CASES.read_text())
    assert cases["rule_files"] == ["../../../charts/kloop/files/prometheus/rules.yaml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in cases["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alerts() - fires == set(), "alerts never shown firing"
    assert alerts() - silent == set(), "alerts never shown silent"
