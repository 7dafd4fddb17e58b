from e2e.fixtures import (
    api_client,
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
    "cluster",
    "extra_cluster",
    "fleet",
    "fleet_node",
    "kloop_crds",
    "namespace",
    "operator",
]
