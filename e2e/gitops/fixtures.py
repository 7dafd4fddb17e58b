"""pytest fixtures for GitOps tests: Flux's controllers and a git server, once per session.

Imported by the GitOps test modules (not the shared conftest), so only they build and start
Flux. The controllers' logs stay in pytest's temporary directory; ``flux_logs`` prints their
tails after each test, which pytest shows when the test failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.gitops.flux import FluxControllers, install_flux_crds
from e2e.gitops.git_server import GitServer, git_server


@pytest.fixture(scope="session")
def flux(
    cluster: Path, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[FluxControllers]:
    """source-controller and kustomize-controller running against the test cluster."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # a cold build takes minutes: show progress
        print()
        controllers = FluxControllers(tmp_path_factory.mktemp("flux"))
    install_flux_crds(cluster)
    controllers.start(cluster)
    try:
        yield controllers
    finally:
        controllers.stop()
        print(f"flux controller logs: {controllers.workdir}")


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
