"""The agent kit ``kloop.local/kloop-kit:<version>``: python3, kloop-agent, kubectl, git, busybox.

Makers and checkers act on their target cluster with ``kubectl`` and hand their result to the
operator with ``kloop-agent``. The kit is the Dockerfile's ``kit`` target, built with buildah from
a Debian base that mmdebstrap makes locally (``e2e.cluster.oci``); this module is the harness's
one way to get it, so ``make image`` and ``make cluster-up`` import the same tarball.
"""

from __future__ import annotations

import os
from pathlib import Path

from e2e.cluster import oci

KIT_IMAGE_ENV = "KLOOP_E2E_KIT_IMAGE"


def kit_image() -> str:
    """The image reference pods use: ``kloop.local/kloop-kit:<kloop version>``.

    ``$KLOOP_E2E_KIT_IMAGE`` names another one already in the node (several checkouts that
    share one node can each test their own kit under its own tag).
    """
    return os.environ.get(KIT_IMAGE_ENV) or oci.KIT.ref()


def build_kit_image(say: oci.Say = print) -> Path:
    """Build (or find cached) the kit's docker-archive tarball; return its path."""
    return oci.build(oci.KIT, oci.prepare_context((oci.KIT,), say), say)
