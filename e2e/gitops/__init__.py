"""GitOps on the local cluster: Flux controllers built from source, a loopback git server."""
