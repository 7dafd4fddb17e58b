from e2e.fixtures import api_client, cluster, extra_cluster, kloop_crds, namespace

__all__ = ["api_client", "cluster", "extra_cluster", "kloop_crds", "namespace"]
