"""``kloop-operator``: register the handlers and run kopf (standalone, one replica per shard)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import kopf

from kloop import logs, memtrace, metrics
from kloop.adapters.egress import EgressGuard
from kloop.core.egress import IPNetwork, parse_cidr
from kloop.core.shard import Shard, ShardError, parse


def _cidr(value: str) -> IPNetwork:
    try:
        return parse_cidr(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _shard(value: str) -> Shard:
    try:
        return parse(value)
    except ShardError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    """Run the operator until interrupted."""
    parser = argparse.ArgumentParser(prog="kloop-operator", description=__doc__)
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("KLOOP_METRICS_PORT", "0")),
        help="serve Prometheus metrics on this port, e.g. 8080 (default 0: off)",
    )
    parser.add_argument(
        "--webhook-port",
        type=int,
        default=int(os.environ.get("KLOOP_WEBHOOK_PORT", "0")),
        help=(
            "receive release webhooks (GitHub, GitLab, generic) on this port, e.g. 9292 "
            "(env KLOOP_WEBHOOK_PORT; default 0: off; see docs/automations.md)"
        ),
    )
    parser.add_argument(
        "--health",
        default=os.environ.get("KLOOP_HEALTH_ENDPOINT"),
        help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz (default: none)",
    )
    parser.add_argument(
        "--allow-egress-cidr",
        action="append",
        type=_cidr,
        default=[
            _cidr(c) for c in os.environ.get("KLOOP_ALLOW_EGRESS_CIDRS", "").split(",") if c.strip()
        ],
        metavar="CIDR",
        help=(
            "let requests made for Loop authors (HTTP oracles, git triggers) reach this range "
            "even if it is loopback, link-local or unspecified (repeatable; env "
            "KLOOP_ALLOW_EGRESS_CIDRS, comma-separated); default: none"
        ),
    )
    parser.add_argument(
        "--shard-label",
        type=_shard,
        default=os.environ.get("KLOOP_SHARD_LABEL") or None,
        metavar="SELECTOR",
        help=(
            "serve only the Loops, LoopRuns and pods this selector over kloop.dev/shard matches, "
            "filtered by the apiserver, e.g. kloop.dev/shard=a, or !kloop.dev/shard for the "
            "unlabelled ones (env KLOOP_SHARD_LABEL; default: all; see docs/scaling.md)"
        ),
    )
    parser.add_argument("--log-level", default=os.environ.get("KLOOP_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    memtrace.install()  # KLOOP_MEMDUMP, KLOOP_TRACEMALLOC: diagnostics, off by default
    from kloop import handlers, triggers  # noqa: F401  (registers the kopf handlers)

    if args.metrics_port:
        metrics.serve(args.metrics_port)

    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.health,
            memo=kopf.Memo(
                egress=EgressGuard(tuple(args.allow_egress_cidr)),
                webhook_port=args.webhook_port,
                shard=args.shard_label,
            ),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
