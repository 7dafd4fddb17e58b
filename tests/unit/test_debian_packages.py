"""Which Debian packages the harness installs: those whose proof path is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.cluster.debian import missing

pytestmark = pytest.mark.unit


def test_only_packages_whose_proof_path_is_absent_are_missing(tmp_path: Path) -> None:
    present = tmp_path / "present"
    present.touch()
    packages = {"here": str(present), "gone": str(tmp_path / "absent")}
    assert missing(packages) == ["gone"]
