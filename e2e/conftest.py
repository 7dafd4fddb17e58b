import pytest

from e2e import incluster
from e2e.fixtures import (
    api_client,
    chart_release,
    cluster,
    extra_cluster,
    fleet,
    fleet_node,
    kloop_crds,
    namespace,
    operator,
)

__all__ = [
    "api_client",
    "chart_release",
    "cluster",
    "extra_cluster",
    "fleet",
    "fleet_node",
    "kloop_crds",
    "namespace",
    "operator",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_modes: also runs against the operator installed from the chart"
    )
    config.addinivalue_line(
        "markers", "bench: a benchmark reference (Argo Workflows): run by make bench, not make test"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In chart mode, skip tests that start operators of their own (two would serve one run)."""
    if not incluster.chart_mode():
        return
    skip = pytest.mark.skip(reason=f"{incluster.MODE_ENV}=chart runs only tests marked both_modes")
    for item in items:
        if item.get_closest_marker("both_modes") is None:
            item.add_marker(skip)
