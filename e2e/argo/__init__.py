"""Argo Workflows v4.0.5 as a benchmark reference for kloop (issue 19), never a dependency.

kloop's cost per run is only meaningful next to a mature controller doing the same work on the
same node, so this package builds Argo's workflow-controller and argoexec from the Go module
proxy (``build``), wraps argoexec as a local image (``image``), runs the controller as a host
process against the local cluster (``controller.ArgoController``) and expresses kloop's greeting
loop as a recursive steps workflow (``workflow``). ``procstat`` samples the controller's CPU and
RSS from /proc. ``python -m e2e.argo run --runs 3 --requeue 1`` tries it by hand; a benchmark
imports the same pieces::

    with ArgoController(namespace, requeue_seconds=1) as argo:  # None: Argo's default, 10 s
        cpu0 = procstat.cpu_seconds(argo.pid)
        submit(namespace, greeting_workflow("greeting-1"))
        wf = wait_finished(namespace, "greeting-1", timeout=300)  # exit handler included
        pods = pods_of(namespace, "greeting-1")
        cpu = procstat.cpu_seconds(argo.pid) - cpu0; rss = procstat.peak_rss_mib(argo.pid)

Measured here (2 shared cores, busy): create -> done about 70 s at the default requeue and
44-56 s at 1 s; 7 pods / 21 containers per run; controller peak RSS about 70-74 MiB.
Nothing in ``operator/`` imports this package.
"""
