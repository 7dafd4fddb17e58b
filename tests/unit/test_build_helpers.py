"""The shared Go build helpers: the build environment and the atomic installs into the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.cluster.build import go_env, install_atomically, install_binary_atomically

pytestmark = pytest.mark.unit


def test_go_builds_use_the_local_toolchain_unless_a_build_overrides_it() -> None:
    assert go_env()["GOTOOLCHAIN"] == "local"
    overridden = go_env({"GOFLAGS": "-mod=mod"})
    assert (overridden["GOFLAGS"], overridden["CGO_ENABLED"]) == ("-mod=mod", "0")


def test_installing_a_build_replaces_the_cached_directory_and_leaves_no_partial(
    tmp_path: Path,
) -> None:
    built = tmp_path / "built"
    built.mkdir()
    (built / "new").write_text("new")
    dest = tmp_path / "cache" / "bin"
    dest.mkdir(parents=True)
    (dest / "stale").write_text("old")
    install_atomically(built, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["new"]
    assert [p.name for p in dest.parent.iterdir()] == ["bin"]


def test_installing_one_binary_keeps_its_neighbours_and_leaves_no_partial(tmp_path: Path) -> None:
    built = tmp_path / "source-controller"
    built.write_text("binary")
    cache = tmp_path / "bin"
    cache.mkdir()
    (cache / "kustomize-controller").write_text("other")
    install_binary_atomically(built, cache / "source-controller")
    assert sorted(p.name for p in cache.iterdir()) == ["kustomize-controller", "source-controller"]
    assert (cache / "source-controller").read_text() == "binary"
