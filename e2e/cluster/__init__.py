"""A real local Kubernetes (etcd, control plane, kubelet, containerd) built from source.

Run ``python -m e2e.cluster up|down|status|kubeconfig``; see docs/local-cluster.md.
"""
