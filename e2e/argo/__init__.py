"""Argo Workflows v4.0.5 as a benchmark reference for kloop (issue 19), never a dependency.

kloop's cost per run is only meaningful next to a mature controller doing the same work on the
same node, so this package builds Argo's workflow-controller and argoexec from the Go module
proxy (``build``), wraps argoexec as a local image (``image``), runs the controller as a host
process against the local cluster (``controller.ArgoController``) and expresses kloop's greeting
loop as a recursive steps workflow (``workflow``). ``procstat`` samples the controller's CPU and
RSS from /proc. ``python -m e2e.argo run --runs 3 --requeue 1`` tries it by hand; the benchmark
imports the same pieces. Nothing in ``operator/`` imports this package.
"""
