"""``make install`` / ``make uninstall``: the chart in the local cluster, as platform teams run it.

Install: the local cluster (started when none runs), the images (``make image``, imported into
the node), the CRDs applied server-side (Helm never upgrades ``crds/``), then ``helm upgrade
--install`` with the local image, waiting until the operator's Deployment is Ready.

Uninstall: the release, then the CRDs (and with them every Loop and LoopRun) and the namespace,
then a check that nothing labelled with the release is left anywhere in the cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from e2e import image
from e2e.cluster import local, oci
from e2e.cluster.helm import helm
from e2e.cluster.paths import ADMIN_KUBECONFIG, apply_crds, run_kubectl

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "kloop"
RELEASE = "kloop"
NAMESPACE = "kloop-system"
CLUSTER_KINDS = (
    "clusterroles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
    "validatingadmissionpolicies.admissionregistration.k8s.io",
    "validatingadmissionpolicybindings.admissionregistration.k8s.io",
)


def say(msg: str) -> None:
    print(f"[kloop-install {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _kubectl(kubeconfig: Path, *args: str, check: bool = True) -> str:
    return run_kubectl(kubeconfig, *args, check=check).stdout


def local_image_values() -> dict[str, object]:
    """Values that point the chart at the image ``make image`` imported (never pulled)."""
    return {
        "image": {
            "repository": oci.OPERATOR.repository,
            "tag": oci.project_version(),
            "pullPolicy": "Never",
        }
    }


def install(
    kubeconfig: Path,
    values: dict[str, object] | None = None,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    timeout_seconds: int = 180,
) -> None:
    """Apply the CRDs and install or upgrade the release; return once the operator is Ready."""
    apply_crds(kubeconfig, CHART / "crds")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
        yaml.safe_dump({**local_image_values(), **(values or {})}, values_file)
        values_file.flush()
        helm(
            kubeconfig,
            "upgrade",
            "--install",
            release,
            str(CHART),
            f"--namespace={namespace}",
            "--create-namespace",
            f"--values={values_file.name}",
            "--wait",  # until the Deployment is Ready (kstatus), so no rollout status after
            f"--timeout={timeout_seconds}s",
            timeout=timeout_seconds + 30,
        )


def leftovers(kubeconfig: Path, release: str = RELEASE, namespace: str = NAMESPACE) -> list[str]:
    """Everything of the release still in the cluster: labelled objects, CRDs, the namespace."""
    found = []
    selector = f"app.kubernetes.io/instance={release}"
    for kind in CLUSTER_KINDS:
        out = _kubectl(kubeconfig, "get", kind, "-l", selector, "-o", "name")
        found += out.split()
    crds = json.loads(_kubectl(kubeconfig, "get", "crd", "-o", "json"))["items"]
    found += [f"crd/{c['metadata']['name']}" for c in crds if c["spec"]["group"] == "kloop.dev"]
    ns = _kubectl(kubeconfig, "get", "namespace", namespace, "-o", "name", check=False)
    found += ns.split()
    return found


def uninstall(kubeconfig: Path, release: str = RELEASE, namespace: str = NAMESPACE) -> list[str]:
    """Remove the release, the CRDs (with every Loop and LoopRun) and the namespace.

    Returns what is still there afterwards (empty when clean). LoopRuns carry no finalizer, so
    deleting the CRDs after the operator is gone never hangs; their pods go with them (owners).
    """
    releases = helm(kubeconfig, "list", f"--namespace={namespace}", "-q")
    if release in releases.split():
        helm(kubeconfig, "uninstall", release, f"--namespace={namespace}", "--wait")
    _kubectl(kubeconfig, "delete", "-f", str(CHART / "crds"), "--ignore-not-found", "--wait=true")
    _kubectl(kubeconfig, "delete", "namespace", namespace, "--ignore-not-found", "--wait=true")
    return leftovers(kubeconfig, release, namespace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.install", description=__doc__)
    parser.add_argument("action", choices=["install", "uninstall"])
    args = parser.parse_args(argv)
    if args.action == "uninstall":
        if not local.is_up():
            say("the local cluster is not up: nothing to uninstall")
            return 0
        left = uninstall(ADMIN_KUBECONFIG)
        if left:
            say(f"still present after uninstall: {', '.join(left)}")
            return 1
        say(f"release {RELEASE}, its CRDs and namespace {NAMESPACE} removed; nothing left")
        return 0
    kubeconfig = local.up()
    if image.main([]) != 0:
        return 1
    say(f"helm upgrade --install {RELEASE} {CHART.relative_to(REPO)} -n {NAMESPACE}")
    started = time.monotonic()
    install(kubeconfig)
    say(f"operator Ready in {time.monotonic() - started:.0f}s")
    print(_kubectl(kubeconfig, "get", "deployment,pods", f"--namespace={NAMESPACE}"))
    say(f"KUBECONFIG={kubeconfig}; run the greeting Loop as in docs/helm.md (make install)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
