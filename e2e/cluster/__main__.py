"""CLI: ``python -m e2e.cluster up|down|status|kubeconfig|add-cluster NAME|build|images``."""

from __future__ import annotations

import argparse
import sys

from e2e.cluster import build, images, local
from e2e.cluster.paths import ADMIN_KUBECONFIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="build what is missing and start the one-node cluster")
    sub.add_parser("down", help="stop everything and remove the cluster's state")
    sub.add_parser("status", help="show which components run")
    sub.add_parser("kubeconfig", help="print the admin kubeconfig path")
    sub.add_parser("build", help="only build (or find cached) binaries")
    sub.add_parser("images", help="build the test images as tarballs (e.g. for `kind load`)")
    extra = sub.add_parser("add-cluster", help="start another apiserver on its own etcd prefix")
    extra.add_argument("name")
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
        elif args.command == "images":
            print(images.build_pause_image(build.kubernetes_module_dir()))
            print(images.build_busybox_image())
        elif args.command == "add-cluster":
            print(local.add_cluster(args.name))
    except local.ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
