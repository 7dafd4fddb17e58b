"""``make demo``: bring up the local cluster (unless KUBECONFIG points at one) and show it works."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from e2e.cluster import local


def demo_kubeconfig() -> Path:
    """The user's cluster when KUBECONFIG is set, else the local harness cluster (started)."""
    if os.environ.get("KUBECONFIG"):
        return Path(os.environ["KUBECONFIG"])
    return local.up()


def main() -> int:
    kubeconfig = demo_kubeconfig()
    print(f"cluster ready: KUBECONFIG={kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
