"""pytest fixtures for GitOps tests: Flux's controllers and a git server, once per session.

Imported by the GitOps test modules (not the shared conftest), so only they build and start
Flux. The controllers' logs stay in pytest's temporary directory; ``flux_logs`` prints their
tails after each test, which pytest shows when the test failed. At session end, after the
controllers stopped, the Flux CRDs this session installed are deleted again when they hold no
object (each test deletes its Flux objects while the controllers still run).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.gitops.flux import FluxControllers, flux_crds, install_flux_crds, remove_unused_crds
from e2e.gitops.git_server import GitServer, git_server, recent_requests


@pytest.fixture(scope="session")
def flux(
    cluster: Path, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[FluxControllers]:
    """source-controller and kustomize-controller running against the test cluster."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # a cold build takes minutes: show progress
        print()
        controllers = FluxControllers(tmp_path_factory.mktemp("flux"))
    before = flux_crds(cluster)
    installed = set(install_flux_crds(cluster)) - before
    try:
        controllers.start(cluster)
        yield controllers
    finally:
        controllers.stop()
        print(f"flux controller logs: {controllers.workdir}")
        kept = remove_unused_crds(cluster, sorted(installed))
        if kept:
            print(f"Flux CRDs kept (they still hold objects): {', '.join(kept)}")


@pytest.fixture(scope="session")
def git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    """A git server on 127.0.0.1 serving the bare repositories tests create."""
    with git_server(tmp_path_factory.mktemp("git")) as server:
        yield server


@pytest.fixture
def flux_logs(flux: FluxControllers) -> Iterator[FluxControllers]:
    """The controllers, with their log tails printed after the test (shown on failure)."""
    yield flux
    for controller in (flux.source, flux.kustomize):
        print(f"--- {controller.binary.name} log (tail) ---\n{controller.log_tail(40)}")
    print(f"--- the git server's last requests ---\n{recent_requests()}")
