"""A node of its own for one extra cluster: containerd, CNI bridge, kubelet and scheduler.

An extra cluster (``extra.add_cluster``) is only an apiserver. ``add_node`` gives one of them a
second kubelet on this host, so a pod created in that cluster's API runs there (kloop's
``placement: target``). Everything the main node owns must stay untouched, so every piece has its
own name, path, socket, port, cgroup root, bridge and subnet:

- **containerd B**: own root, state, grpc and ttrpc sockets, runc root and CNI conf dir. Sharing
  the main containerd is impossible: the CRI namespace ``k8s.io`` is fixed, so each kubelet would
  kill the other's pods as unknown.
- **CNI B**: bridge ``cni1`` at 10.89.0.1/16, its own network name and host-local IPAM dir.
- **kubelet B**: own ``--root-dir``, ports 10260 (API) and 10258 (healthz), no read-only port,
  ``cgroupRoot: /kloop-<cluster>`` (otherwise both kubelets manage ``/kubepods`` and kill each
  other's pod cgroups), its own ``podLogsDir`` (each kubelet deletes the log directories of pods
  it does not know), a client certificate ``system:node:<cluster>-node`` for apiserver B and a
  serving certificate naming 10.89.0.1 (apiserver B fetches logs there with the harness's kubelet
  client certificate, which every apiserver of the harness already has).
- **One mount namespace** (``unshare -m``) holds containerd B and kubelet B: the kubelet's device
  plugin socket dir ``/var/lib/kubelet/device-plugins`` is a fixed path that a starting kubelet
  empties, so a private directory is bind-mounted over it there; the volume and rootfs mounts of
  node B live and die with that namespace, and the two daemons see the same mounts.
- **kube-scheduler B** (secure port 10269): apiserver B has no scheduler. There is no
  controller-manager either, so ``add_node`` removes the ``node.kubernetes.io/not-ready`` taint
  that admission puts on a new Node once the node is Ready (the node lifecycle controller's job),
  and pods there need an explicit ServiceAccount (no ``default`` one is made).

No second kube-proxy (two would fight over the same iptables chains). One node at a time: ports,
bridge and subnet are fixed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

from e2e.cluster import build, extra, images, local, pki, processes
from e2e.cluster.paths import PKI, STATE_ROOT, kubectl

NODES_DIR = STATE_ROOT / "nodes"
BRIDGE = "cni1"
NODE_IP = "10.89.0.1"
POD_CIDR = "10.89.0.0/16"
KUBELET_PORT = 10260
HEALTHZ_PORT = 10258
SCHEDULER_PORT = 10269
CGROUP_FS = Path("/sys/fs/cgroup")
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
NETNS_DIRS = ("/run/netns/", "/var/run/netns/")
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


def node_name(cluster: str) -> str:
    """The Node's name in the cluster's API."""
    return f"{cluster}-node"


def cgroup_root(cluster: str) -> str:
    """The kubelet's ``cgroupRoot``: pods live under ``/kloop-<cluster>/kubepods``."""
    return f"/kloop-{cluster}"


def _dir(cluster: str) -> Path:
    return NODES_DIR / cluster


def containerd_socket(cluster: str) -> Path:
    """The grpc socket of containerd B (``ctr --address``)."""
    return _socket(cluster)


def _socket(cluster: str) -> Path:
    return _dir(cluster) / "containerd" / "run" / "containerd.sock"


def _proc(cluster: str, component: str) -> str:
    return f"node-{cluster}-{component}"


def _components(cluster: str) -> list[str]:
    return [_proc(cluster, c) for c in ("mntns", "containerd", "kubelet", "scheduler")]


def names() -> list[str]:
    """Extra clusters that have a node directory (running or half torn down)."""
    if not NODES_DIR.exists():
        return []
    return sorted(p.name for p in NODES_DIR.iterdir() if p.is_dir())


def has_node(cluster: str) -> bool:
    """Whether the node's kubelet runs."""
    return processes.running(_proc(cluster, "kubelet"))


def _admin_kubeconfig(cluster: str) -> Path:
    return local.CLUSTERS_DIR / f"apiserver-{cluster}.kubeconfig"


def _hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd, the hybrid unified one)."""
    return sorted(p for p in CGROUP_FS.iterdir() if p.is_dir() and not p.is_symlink())


def _ensure_cgroup_root(cluster: str) -> None:
    """Create the cgroup root in every hierarchy: the kubelet refuses one that is missing."""
    for hierarchy in _hierarchies():
        path = hierarchy / cgroup_root(cluster).lstrip("/")
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":  # an empty cpuset cannot hold a task or a child
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if not (path / knob).read_text().strip():
                    (path / knob).write_text((hierarchy / knob).read_text())


def _node_pki(cluster: str) -> Path:
    """The node's client+serving certificate (``system:node:<cluster>-node``) and kubeconfig."""
    directory = _dir(cluster) / "pki"
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PKI / "ca.crt", directory / "ca.crt")
    name = node_name(cluster)
    leaf = pki.Leaf(
        "kubelet",
        f"/O=system:nodes/CN=system:node:{name}",
        "serverAuth,clientAuth",
        f"DNS:{name},DNS:localhost,IP:127.0.0.1,IP:{NODE_IP}",
    )
    pki.issue_leaf(PKI, leaf, directory)
    server = extra.server_of(cluster)
    return pki.write_kubeconfig(_dir(cluster) / "kubelet.kubeconfig", directory, "kubelet", server)


def _containerd_config(cluster: str) -> str:
    base = _dir(cluster) / "containerd"
    return local.containerd_config(
        base,
        _socket(cluster),
        _dir(cluster) / "cni" / "net.d",
        ttrpc_socket=base / "run" / "containerd.sock.ttrpc",
        runc_root=base / "runc",
    )


def _cni_config(cluster: str) -> str:
    network, ipam = f"kloop-pods-{cluster}", _dir(cluster) / "cni" / "ipam"
    return local.cni_config(network, BRIDGE, POD_CIDR, NODE_IP, ipam, portmap=False)


def _kubelet_config(cluster: str) -> str:
    return local.kubelet_config(
        _socket(cluster),
        NODE_IP,
        _dir(cluster) / "pki",
        {
            "cgroupRoot": cgroup_root(cluster),
            "port": str(KUBELET_PORT),
            "healthzPort": str(HEALTHZ_PORT),
            "podCIDR": POD_CIDR,
            "podLogsDir": str(_dir(cluster) / "pod-logs"),
        },
    )


def _start_mount_namespace(cluster: str) -> int:
    """A process holding node B's mount namespace, with a private device-plugins dir in it."""
    name = _proc(cluster, "mntns")
    if not processes.running(name):
        private = _dir(cluster) / "device-plugins"
        private.mkdir(parents=True, exist_ok=True)
        # The copies of the main node's mounts (its pods' network namespaces, rootfs and volume
        # mounts) are dropped here, in the private namespace only: node B must not hold them.
        main_mounts = "|".join(["/run/netns/", "/var/run/netns/", f"{STATE_ROOT}/"])
        script = (
            f"mkdir -p {DEVICE_PLUGINS} && mount --bind {private} {DEVICE_PLUGINS} && "
            f"awk '{{print $5}}' /proc/self/mountinfo | grep -E '^({main_mounts})' | sort -r | "
            'while read -r m; do umount -l "$m"; done; exec sleep infinity'
        )
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        processes.start(name, argv, match="sleep")
    pid = processes.pid_of(name)
    assert pid is not None
    # Polled by hand: while unshare and sh exec, the command line can read empty for an instant,
    # which local.wait_ready would take for a dead process.
    deadline = time.monotonic() + 10
    while processes.cmdline(pid)[:1] != ["sleep"]:
        if time.monotonic() > deadline or not Path(f"/proc/{pid}").exists():
            raise local.ClusterError(
                f"node mount namespace not ready; log {processes.log_tail(name)}"
            )
        time.sleep(0.05)
    return pid


def _in_namespace(holder: int, argv: list[str]) -> list[str]:
    return ["nsenter", f"--mount=/proc/{holder}/ns/mnt", "--", *argv]


def _start_containerd(cluster: str, holder: int) -> None:
    conf_dir = _dir(cluster) / "cni" / "net.d"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-kloop.conflist").write_text(_cni_config(cluster))
    _socket(cluster).parent.mkdir(parents=True, exist_ok=True)
    config = _dir(cluster) / "containerd" / "config.toml"
    config.write_text(_containerd_config(cluster))
    name = _proc(cluster, "containerd")
    if not processes.running(name):
        argv = _in_namespace(holder, ["containerd", "--config", str(config)])
        processes.start(name, argv, match=str(config))
    socket = str(_socket(cluster))
    local.wait_ready(
        "node containerd",
        lambda: (
            subprocess.run(["ctr", "--address", socket, "version"], capture_output=True).returncode
            == 0
        ),
        30,
        name,
    )


def _import_images(cluster: str) -> None:
    """The pause, busybox and kit images (cached tarballs) into containerd B."""
    record = _dir(cluster) / "images-imported"
    done = set(record.read_text().split()) if record.exists() else set()
    for tar in local.build_images(build.kubernetes_module_dir()):
        if tar.name not in done:
            local.say(f"node {node_name(cluster)}: importing {tar.name}")
            images.import_image(str(_socket(cluster)), tar)
            done.add(tar.name)
    record.write_text("\n".join(sorted(done)) + "\n")


def _start_kubelet(cluster: str, holder: int, k8s_bin: Path, kubeconfig: Path) -> None:
    root = _dir(cluster) / "kubelet"
    root.mkdir(parents=True, exist_ok=True)
    (_dir(cluster) / "pod-logs").mkdir(exist_ok=True)
    config = _dir(cluster) / "kubelet.yaml"
    config.write_text(_kubelet_config(cluster))
    name = _proc(cluster, "kubelet")
    if not processes.running(name):
        argv = [
            str(k8s_bin / "kubelet"),
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            f"--hostname-override={node_name(cluster)}",
            f"--node-ip={NODE_IP}",
            f"--root-dir={root}",
            f"--cert-dir={_dir(cluster) / 'pki'}",
            "--v=1",
        ]
        processes.start(name, _in_namespace(holder, argv), match=str(config))


def _start_scheduler(cluster: str, k8s_bin: Path) -> None:
    server = extra.server_of(cluster)
    kubeconfig = pki.write_kubeconfig(
        _dir(cluster) / "scheduler.kubeconfig", PKI, "scheduler", server, cluster
    )
    name = _proc(cluster, "scheduler")
    if not processes.running(name):
        processes.start(
            name,
            [
                str(k8s_bin / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={SCHEDULER_PORT}",
                "--v=1",
            ],
        )


def _kubectl(cluster: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubectl()), "--kubeconfig", str(_admin_kubeconfig(cluster)), "--request-timeout=5s"]
        + list(args),
        capture_output=True,
        text=True,
    )


def _ready(cluster: str) -> bool:
    jsonpath = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
    out = _kubectl(cluster, "get", "node", node_name(cluster), "-o", jsonpath)
    return out.returncode == 0 and out.stdout.strip() == "True"


def _untaint(cluster: str) -> None:
    """Remove the not-ready taint admission put on the new Node (no node lifecycle controller)."""
    taints = _kubectl(cluster, "get", "node", node_name(cluster), "-o", "jsonpath={.spec.taints}")
    if NOT_READY_TAINT in taints.stdout:
        _kubectl(cluster, "taint", "node", node_name(cluster), f"{NOT_READY_TAINT}-")


def add_node(cluster: str) -> str:
    """Give the running extra cluster ``cluster`` its own Ready node; return the node's name.

    Idempotent: running components are kept. Refused while another cluster has the node (one
    bridge, subnet and port set).
    """
    if not extra.is_running(cluster):
        raise local.ClusterError(f"extra cluster {cluster!r} does not run: add-cluster it first")
    others = [n for n in names() if n != cluster]
    if others:
        raise local.ClusterError(f"cluster {others[0]!r} has the node: remove-node it first")
    started = time.monotonic()
    k8s_bin = build.build_kubernetes()
    local.say(f"node {node_name(cluster)}: bridge {BRIDGE} {NODE_IP}/16, cgroups, certificates")
    _dir(cluster).mkdir(parents=True, exist_ok=True)
    local.ensure_bridge(BRIDGE, NODE_IP, POD_CIDR)
    _ensure_cgroup_root(cluster)
    kubeconfig = _node_pki(cluster)
    holder = _start_mount_namespace(cluster)
    local.say(f"node {node_name(cluster)}: containerd, images, kubelet, scheduler")
    _start_containerd(cluster, holder)
    _import_images(cluster)
    _start_kubelet(cluster, holder, k8s_bin, kubeconfig)
    _start_scheduler(cluster, k8s_bin)
    local.wait_ready("node Ready", lambda: _ready(cluster), 120, _proc(cluster, "kubelet"))
    _untaint(cluster)
    local.say(f"node {node_name(cluster)} Ready in {time.monotonic() - started:.0f}s")
    return node_name(cluster)


def _mount_points(mountinfo: Path) -> set[str]:
    try:
        return {line.split()[4] for line in mountinfo.read_text().splitlines()}
    except OSError:
        return set()


def _netns_of(holder: int | None) -> list[Path]:
    """Pod network namespaces of node B: mounted in its mount namespace, not in this one.

    A path mounted here belongs to the main node's containerd and is never touched.
    """
    if holder is None:
        return []
    ours = _mount_points(Path(f"/proc/{holder}/mountinfo"))
    main = _mount_points(Path("/proc/self/mountinfo"))
    return [
        Path(target)
        for target in sorted(ours - main)
        if target.startswith(NETNS_DIRS) and Path(target).name.startswith("cni-")
    ]


def _kill_cgroup_processes(cluster: str) -> None:
    """Kill everything kubelet B started: it lives under its own cgroup root."""
    local.kill_cgroup_processes(h / cgroup_root(cluster).lstrip("/") for h in _hierarchies())


def _remove_cgroups(cluster: str) -> None:
    for _ in range(20):
        left = []
        for hierarchy in _hierarchies():
            root = hierarchy / cgroup_root(cluster).lstrip("/")
            if not root.exists():
                continue
            for path in sorted(
                (p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    path.rmdir()
            try:
                root.rmdir()
            except OSError:
                left.append(root)
        if not left:
            return
        time.sleep(0.25)


def remove_node(cluster: str) -> None:
    """Stop node B's daemons and pods and remove everything it made; the main node is untouched."""
    local.say(f"node {node_name(cluster)}: stopping")
    holder = processes.pid_of(_proc(cluster, "mntns"))
    if not processes.running(_proc(cluster, "mntns")):
        holder = None
    netns = _netns_of(holder)
    processes.stop(_proc(cluster, "scheduler"))
    processes.stop(_proc(cluster, "kubelet"))
    _kill_cgroup_processes(cluster)
    for shim in processes.pids_matching(str(_socket(cluster))):
        processes.kill_pid(shim, grace=2)
    processes.stop(_proc(cluster, "containerd"))
    for leftover in processes.pids_matching(str(_dir(cluster))):
        processes.kill_pid(leftover, grace=2)
    processes.stop(_proc(cluster, "mntns"), grace=2)  # the namespace and its mounts go with it
    for path in netns:
        path.unlink(missing_ok=True)
    _remove_cgroups(cluster)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    if extra.is_running(cluster):
        _kubectl(cluster, "delete", "node", node_name(cluster), "--ignore-not-found")
    shutil.rmtree(_dir(cluster), ignore_errors=True)
    local.say(f"node {node_name(cluster)} removed")


def remove_all() -> None:
    """Remove every extra cluster's node (``down`` calls it before stopping the main node)."""
    for cluster in names():
        remove_node(cluster)


def status() -> dict[str, bool]:
    """Which node components run, per cluster that has a node."""
    return {name: processes.running(name) for c in names() for name in _components(c)}
