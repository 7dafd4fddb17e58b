"""``kloop-operator``: register the handlers and run kopf (standalone, one replica)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import kopf

from kloop import logs, metrics


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
        "--health",
        default=os.environ.get("KLOOP_HEALTH_ENDPOINT"),
        help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz (default: none)",
    )
    parser.add_argument("--log-level", default=os.environ.get("KLOOP_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    from kloop import handlers  # noqa: F401  (registers the kopf handlers)

    if args.metrics_port:
        metrics.serve(args.metrics_port)

    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.health,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
