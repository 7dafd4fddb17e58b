"""The images `make image` builds from the Dockerfile run on the node, as non-root, as shipped."""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from e2e.cluster import images, local, oci
from e2e.fixtures import using_external_cluster
from e2e.helpers import run_pod
from e2e.image import build_all

pytestmark = pytest.mark.e2e

NON_ROOT = 65532


@pytest.fixture(scope="session")
def built_images() -> dict[str, Path]:
    """Both images built (cached by their inputs) as docker-archive tarballs."""
    return build_all()


@pytest.fixture(scope="session")
def node_images(built_images: dict[str, Path], cluster: Path) -> Iterator[dict[str, Path]]:
    """The tarballs imported into the local node's containerd (an external cluster: skipped)."""
    if using_external_cluster():
        pytest.skip("load the images into your cluster yourself (docs/images.md)")
    for tar in built_images.values():
        images.import_image(str(local.CONTAINERD_SOCKET), tar)
    yield built_images


def _hardened(**container: object) -> client.V1Container:
    return client.V1Container(
        image_pull_policy="Never",
        security_context=client.V1SecurityContext(
            run_as_non_root=True,
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        ),
        **container,
    )


def test_operator_image_runs_kloop_operator_as_uid_65532_on_a_read_only_root(
    api_client: client.ApiClient, namespace: str, node_images: dict[str, Path]
) -> None:
    core = client.CoreV1Api(api_client)
    whoami = (
        "import os, shutil, kloop, kloop.main; "
        "print(os.getuid(), os.getgid(), kloop.__version__, os.environ['HOME'], "
        "shutil.which('git'))"
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="operator-image"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            automount_service_account_token=False,
            containers=[
                _hardened(name="help", image=oci.OPERATOR.ref(), args=["--help"]),
                _hardened(
                    name="whoami", image=oci.OPERATOR.ref(), command=["python3", "-c", whoami]
                ),
            ],
        ),
    )
    done = run_pod(core, namespace, pod)
    help_log = core.read_namespaced_pod_log("operator-image", namespace, container="help")
    whoami_log = core.read_namespaced_pod_log("operator-image", namespace, container="whoami")
    assert done.status.phase == "Succeeded", (help_log, whoami_log)
    assert help_log.startswith("usage: kloop-operator"), help_log  # the image's entrypoint
    version = oci.project_version()
    assert whoami_log.split() == [
        str(NON_ROOT),
        str(NON_ROOT),
        version,
        "/home/kloop",
        "/usr/bin/git",  # git triggers run git ls-remote
    ]


KIT_CHECKS = r"""
set -e
test "$(id -u)" = 65532
python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'
kloop-agent --help | grep -q 'usage: kloop-agent'
kloop-agent run --help | grep -q -- '--harness {command,openai}'
python3 -c 'import openai'  # kloop-agent run --harness openai
kubectl version --client | grep -q 'Client Version: v1\.'
git --version | grep -q '^git version'
busybox | head -n 1 | grep -q '^BusyBox'
for tool in sh wget nc vi awk sed grep timeout; do command -v "$tool" >/dev/null; done
git init -q "$HOME/repo"  # the home directory is writable for the agent
kloop-agent report checker --verdict pass --reason "kit ok"
"""


def test_kit_image_has_python_kloop_agent_kubectl_git_and_busybox_as_non_root(
    api_client: client.ApiClient, namespace: str, node_images: dict[str, Path]
) -> None:
    core = client.CoreV1Api(api_client)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="kit-image"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            automount_service_account_token=False,
            containers=[
                client.V1Container(
                    name="main",
                    image=oci.KIT.ref(),
                    image_pull_policy="Never",
                    command=["sh", "-c", KIT_CHECKS],
                    security_context=client.V1SecurityContext(
                        run_as_non_root=True,
                        allow_privilege_escalation=False,
                        capabilities=client.V1Capabilities(drop=["ALL"]),
                    ),
                )
            ],
        ),
    )
    done = run_pod(core, namespace, pod)
    log = core.read_namespaced_pod_log("kit-image", namespace)
    assert done.status.phase == "Succeeded", log
    result = json.loads(done.status.container_statuses[0].state.terminated.message)
    assert (result["verdict"], result["reasons"]) == ("pass", ["kit ok"])


# Paths that must not reach the operator image: compilers, pip itself and its caches, wheels,
# and the build context (sources are installed into the venv; the rest stays in the builder).
FORBIDDEN = re.compile(
    r"(^|/)bin/([a-z0-9_]+-linux-gnu-)?(gcc|cc|c\+\+|g\+\+|cpp|clang|ld|as)(-[0-9.]+)?$"
    r"|(^|/)cc1(plus)?$"
    r"|^root/\.cache(/|$)|(^|/)\.cache/pip(/|$)|^wheels(/|$)|^ctx(/|$)|^src(/|$)"
    r"|^venv/lib/python3\.\d+/site-packages/pip(/|$)|\.whl$"
)


def test_operator_image_has_no_compiler_pip_cache_wheels_or_build_context(
    built_images: dict[str, Path],
) -> None:
    files = oci.archive_files(built_images[oci.OPERATOR.ref()])
    assert "venv/bin/kloop-operator" in files  # the listing is the image's, not an empty one
    assert [f for f in files if FORBIDDEN.search(f.rstrip("/"))] == []


def test_forbidden_paths_pattern_catches_what_it_names() -> None:
    for bad in (
        "usr/bin/gcc",
        "usr/bin/x86_64-linux-gnu-gcc-12",
        "usr/lib/gcc/x86_64-linux-gnu/12/cc1",
        "root/.cache/pip/http/x",
        "wheels/pydantic-2.whl",
        "venv/lib/python3.11/site-packages/pip/__init__.py",
        "ctx/venv.sh",
    ):
        assert FORBIDDEN.search(bad), bad
    for good in (
        "venv/bin/kloop-operator",
        "usr/bin/python3.11",
        "usr/share/gcc",  # libstdc++'s gdb helpers, not a compiler
        "usr/bin/ldd",
    ):
        assert not FORBIDDEN.search(good), good


def test_image_tarballs_name_only_their_image_so_imports_leave_no_build_tags(
    built_images: dict[str, Path],
) -> None:
    for ref, tarball in built_images.items():
        with tarfile.open(tarball) as archive:
            member = archive.extractfile("manifest.json")
            assert member is not None
            manifest = json.load(member)
        assert [entry["RepoTags"] for entry in manifest] == [[ref]]
