"""Cold builds write to a staging path of their own and rename into the shared cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.cluster.oci import staging_path

pytestmark = pytest.mark.unit


def test_two_builds_at_once_stage_apart_and_leave_only_the_result(tmp_path: Path) -> None:
    out = tmp_path / "wheels-py3.11-abc"
    with staging_path(out) as first, staging_path(out) as second:
        assert first != second and first.name == second.name == out.name
        first.mkdir()
        (first / "a.whl").write_text("a")
        second.mkdir()
        (second / "b.whl").write_text("b")
        first.rename(out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert [p.name for p in out.iterdir()] == ["a.whl"]


def test_a_failed_build_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    out = tmp_path / "base.tar"
    with pytest.raises(RuntimeError), staging_path(out) as partial:
        partial.write_text("half a tarball")
        raise RuntimeError("mmdebstrap failed")
    assert list(tmp_path.iterdir()) == []
