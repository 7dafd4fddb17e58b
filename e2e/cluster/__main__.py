"""CLI: ``python -m e2e.cluster up|down|status|add-cluster|remove-cluster|add-node|...``."""

from __future__ import annotations

import argparse
import sys

from e2e.cluster import build, extra, helm, images, kit, local, node
from e2e.cluster.paths import ADMIN_KUBECONFIG
from e2e.gitops import flux_build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="build what is missing and start the one-node cluster")
    sub.add_parser("down", help="stop everything and remove the cluster's state")
    sub.add_parser("status", help="show which components run")
    sub.add_parser("kubeconfig", help="print the admin kubeconfig path")
    sub.add_parser(
        "build",
        help="only build (or find cached) every binary the suite needs: etcd, Kubernetes, helm, "
        "Flux's source- and kustomize-controller",
    )
    sub.add_parser("images", help="build the test images as tarballs (e.g. for `kind load`)")
    add = sub.add_parser(
        "add-cluster",
        help="start an extra cluster (apiserver on the bridge address, own etcd prefix) and "
        "write its kloop cluster Secret manifest",
    )
    add.add_argument("name")
    add.add_argument(
        "--allowed-namespaces", help="annotation kloop.dev/allowed-namespaces (names or globs)"
    )
    add.add_argument(
        "--agent-service-account", help="annotation kloop.dev/agent-service-account (ns/name)"
    )
    remove = sub.add_parser("remove-cluster", help="stop an extra cluster's apiserver")
    remove.add_argument("name")
    add_node = sub.add_parser(
        "add-node",
        help="give a running extra cluster its own node (containerd, cni1 bridge, kubelet on "
        "10260, scheduler); one cluster at a time",
    )
    add_node.add_argument("name")
    remove_node = sub.add_parser("remove-node", help="stop an extra cluster's node, clean up")
    remove_node.add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(local.up())
        elif args.command == "down":
            local.down()
        elif args.command == "status":
            states = local.status()
            for name, alive in states.items():
                print(f"{name:28} {'running' if alive else 'stopped'}")
            return 0 if states and all(states.values()) else 1
        elif args.command == "kubeconfig":
            print(ADMIN_KUBECONFIG)
            return 0 if ADMIN_KUBECONFIG.exists() else 1
        elif args.command == "build":
            build.build_etcd()
            build.build_kubernetes()
            helm.build_helm()
            flux_build.build_flux()
        elif args.command == "images":
            print(images.build_pause_image(build.kubernetes_module_dir()))
            print(images.build_busybox_image())
            print(kit.build_kit_image())
        elif args.command == "add-cluster":
            added = extra.add_cluster(
                args.name, args.allowed_namespaces, args.agent_service_account
            )
            print(f"kubeconfig: {added.kubeconfig}")
            print(f"secret manifest: {added.secret_manifest}")
        elif args.command == "remove-cluster":
            extra.remove_cluster(args.name)
        elif args.command == "add-node":
            print(f"node: {node.add_node(args.name)}")
        elif args.command == "remove-node":
            node.remove_node(args.name)
    except local.ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
