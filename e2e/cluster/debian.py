"""Install the Debian packages the harness needs, the same way wherever they are needed.

Each caller names its packages with a path that proves each is installed, so a warm run costs a
few ``stat`` calls and never touches apt. ``apt-get update`` runs at most once per process; the
install waits for the dpkg lock (another checkout may be installing at the same time) and never
asks a question.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

Say = Callable[[str], None]

LOCK_TIMEOUT = ["-o", "DPkg::Lock::Timeout=120"]
_updated = False  # apt-get update ran in this process


def dpkg_installed(package: str) -> bool:
    """Whether dpkg records ``package`` as installed (not merely a file it would provide)."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return "install ok installed" in proc.stdout


def missing(packages: Mapping[str, str], verify: Collection[str] = ()) -> list[str]:
    """The packages whose proof path is absent, or (for those in ``verify``) dpkg lacks."""
    return [
        pkg
        for pkg, path in packages.items()
        if not Path(path).exists() or (pkg in verify and not dpkg_installed(pkg))
    ]


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def ensure_debian(
    packages: Mapping[str, str], say: Say = print, verify: Collection[str] = ()
) -> list[str]:
    """Install every package of ``packages`` (name -> proof path) that is missing; return those.

    ``verify`` names packages whose path another package may provide too (``/bin/busybox``
    comes from ``busybox`` as well as ``busybox-static``): those are also checked with dpkg.
    """
    global _updated
    wanted = missing(packages, verify)
    if not wanted:
        return []
    say(f"installing Debian packages: {' '.join(wanted)}")
    if not _updated:
        subprocess.run(
            ["apt-get", *LOCK_TIMEOUT, "update", "-q"],
            check=True,
            env=_apt_env(),
            stdout=subprocess.DEVNULL,
        )
        _updated = True
    subprocess.run(
        ["apt-get", *LOCK_TIMEOUT, "install", "-y", "-q", "--no-install-recommends", *wanted],
        check=True,
        env=_apt_env(),
        stdout=subprocess.DEVNULL,
    )
    still = missing({pkg: packages[pkg] for pkg in wanted}, verify)
    if still:
        raise RuntimeError(f"still missing after apt-get install: {' '.join(still)}")
    return wanted
