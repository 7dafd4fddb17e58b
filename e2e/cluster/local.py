"""Bring a one-node cluster up and down: etcd, control plane, containerd, CNI bridge, kubelet.

Every daemon runs detached with its own log under ``STATE_ROOT/logs``; ``down`` stops them, kills
whatever runs in the pods' cgroups, unmounts what the kubelet and containerd mounted, and removes
the state directory, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster import build, images, kit, pki, processes
from e2e.cluster.debian import ensure_debian
from e2e.cluster.paths import ADMIN_KUBECONFIG, CACHE_ROOT, K8S_BIN, LOGS, PKI, STATE_ROOT, kubectl

ETCD_CLIENT = "http://127.0.0.1:2379"
API_PORT = 6443
BRIDGE = "cni0"
POD_CIDR = "10.88.0.0/16"
SERVICE_CIDR = "10.96.0.0/24"
CONTAINERD_DIR = STATE_ROOT / "containerd"
CONTAINERD_SOCKET = CONTAINERD_DIR / "run" / "containerd.sock"
CNI_CONF_DIR = STATE_ROOT / "cni" / "net.d"
KUBELET_ROOT = STATE_ROOT / "kubelet"
CLUSTERS_DIR = STATE_ROOT / "clusters"
EXTRA_CLUSTER_FIRST_PORT = 6444
LAST_LOGS = CACHE_ROOT / "last-cluster-logs"
IMPORTED = STATE_ROOT / "images-imported"

DEBIAN_NEEDS = {
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "busybox-static": "/bin/busybox",
    "iproute2": "/usr/sbin/ip",
    "openssl": "/usr/bin/openssl",
    "gcc": "/usr/bin/gcc",
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",
    "mmdebstrap": "/usr/bin/mmdebstrap",
    "buildah": "/usr/bin/buildah",
}


def say(msg: str) -> None:
    """Progress on stdout, so a long cold start never looks hung."""
    print(f"[kloop-cluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class ClusterError(RuntimeError):
    """A component did not come up; the message names its log."""


def ensure_debian_packages() -> None:
    """Install the Debian packages the node needs, when any is missing.

    busybox-static is checked with dpkg too: ``/bin/busybox`` may come from the dynamically
    linked ``busybox``, which the busybox image (the binary alone) cannot use.
    """
    if shutil.which("go") is None:
        raise ClusterError("a Go toolchain (>= 1.24) is needed to build Kubernetes: none on PATH")
    ensure_debian(DEBIAN_NEEDS, say, verify=("busybox-static",))


def wait_ready(what: str, check: Callable[[], bool], timeout: float, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if log and not processes.running(log):
            break
        time.sleep(0.25)
    raise ClusterError(
        f"{what} not ready after {timeout:.0f}s; log {LOGS / (log + '.log')}:\n"
        f"{processes.log_tail(log)}"
    )


def _kubectl_ok(kubeconfig: Path, *args: str) -> bool:
    proc = subprocess.run(
        [str(kubectl()), "--kubeconfig", str(kubeconfig), "--request-timeout=3s", *args],
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0


def _kubectl_out(kubeconfig: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(kubectl()), "--kubeconfig", str(kubeconfig), "--request-timeout=5s", *args],
        capture_output=True,
        text=True,
    )
    return proc.stdout if proc.returncode == 0 else ""


def routes_elsewhere(cidr: str, bridge: str) -> list[str]:
    """Interfaces other than ``bridge`` with a route for ``cidr``.

    Podman's default network (``cni-podman0``, which buildah or podman create when they run a
    container with networking) is 10.88.0.0/16 too; when its route comes first, the host answers
    pods on it and every pod-to-host connection (the apiserver, extra clusters) times out.
    """
    out = subprocess.run(
        ["ip", "-o", "route", "show", "exact", cidr], capture_output=True, text=True
    ).stdout
    devices = [line.split(" dev ", 1)[1].split()[0] for line in out.splitlines() if " dev " in line]
    return [dev for dev in devices if dev != bridge]


def bridge_mac(bridge: str) -> str:
    """A locally administered unicast MAC for ``bridge``, from its name (stable across restarts)."""
    digest = hashlib.sha256(bridge.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _pin_mac(bridge: str) -> None:
    """Give the bridge its own MAC address, set explicitly, so that it never changes.

    A Linux bridge with no address set takes the lowest MAC of its ports and recomputes it as
    veths come and go. When the port it had borrowed from leaves (a pod ends), every other pod
    still holds the old gateway MAC in its ARP cache and its packets to the host (apiserver, git
    server) vanish until the entry is probed again, up to about a minute later: a push that hung
    three times in a row on CI. An address set by hand (``addr_assign_type`` 3) is one the kernel
    never replaces. (The CNI bridge plugin pins it only when it adds the gateway address itself;
    the harness adds that first.) ``arp_notify`` announces the change once, to pods already
    running on a bridge pinned late.
    """
    sysfs = Path("/sys/class/net") / bridge
    if not sysfs.exists():
        raise ClusterError(f"the pods' bridge {bridge} is missing: run `make cluster-down` first")
    Path("/proc/sys/net/ipv4/conf", bridge, "arp_notify").write_text("1\n")
    mac = bridge_mac(bridge)
    assigned = (sysfs / "addr_assign_type").read_text().strip()
    if assigned != "3" or (sysfs / "address").read_text().strip() != mac:
        subprocess.run(["ip", "link", "set", bridge, "address", mac], check=True)


def ensure_bridge(bridge: str, gateway: str, pod_cidr: str) -> None:
    """The pods' bridge with the node's gateway address on it (created when missing).

    Refuses a pod network another interface already routes: the host would answer pods there.
    The bridge's MAC address is pinned (``_pin_mac``).
    """
    others = routes_elsewhere(pod_cidr, bridge)
    if others:
        raise ClusterError(
            f"{', '.join(others)} already routes the pod network {pod_cidr}: pods could not "
            f"reach the host. Remove it first (e.g. `ip link del {others[0]}`; podman's default "
            "bridge cni-podman0 is made again only when a container runs with networking)"
        )
    if subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0:
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    _pin_mac(bridge)
    addrs = subprocess.run(["ip", "-4", "addr", "show", bridge], capture_output=True, text=True)
    prefix = pod_cidr.split("/", 1)[1]
    if f"{gateway}/" not in addrs.stdout:
        subprocess.run(["ip", "addr", "add", f"{gateway}/{prefix}", "dev", bridge], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)


def _start_etcd(etcd_bin: Path) -> None:
    if processes.running("etcd"):
        return
    data = STATE_ROOT / "etcd"
    data.mkdir(parents=True, exist_ok=True)
    processes.start(
        "etcd",
        [
            str(etcd_bin / "etcd"),
            f"--data-dir={data}",
            "--name=kloop",
            f"--listen-client-urls={ETCD_CLIENT}",
            f"--advertise-client-urls={ETCD_CLIENT}",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=kloop=http://127.0.0.1:2380",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    etcdctl = str(etcd_bin / "etcdctl")
    wait_ready(
        "etcd",
        lambda: (
            subprocess.run(
                [etcdctl, f"--endpoints={ETCD_CLIENT}", "endpoint", "health"], capture_output=True
            ).returncode
            == 0
        ),
        30,
        "etcd",
    )


@dataclass(frozen=True)
class ApiserverIdentity:
    """What tells one apiserver from another: serving certificate and token issuer and keys."""

    tls_cert: Path
    tls_key: Path
    sa_public_key: Path
    sa_signing_key: Path
    issuer: str


MAIN_IDENTITY = ApiserverIdentity(
    tls_cert=PKI / "apiserver.crt",
    tls_key=PKI / "apiserver.key",
    sa_public_key=PKI / "sa.pub",
    sa_signing_key=PKI / "sa.key",
    issuer="https://kubernetes.default.svc",
)


def apiserver_argv(
    k8s_bin: Path, port: int, prefix: str, bind: str, ident: ApiserverIdentity = MAIN_IDENTITY
) -> list[str]:
    """The kube-apiserver command line; every cluster of the harness shares etcd and the CA."""
    return [
        str(k8s_bin / "kube-apiserver"),
        f"--etcd-servers={ETCD_CLIENT}",
        f"--etcd-prefix={prefix}",
        f"--bind-address={bind}",
        f"--secure-port={port}",
        f"--advertise-address={pki.NODE_IP}",
        f"--tls-cert-file={ident.tls_cert}",
        f"--tls-private-key-file={ident.tls_key}",
        f"--client-ca-file={PKI / 'ca.crt'}",
        f"--service-account-issuer={ident.issuer}",
        f"--service-account-key-file={ident.sa_public_key}",
        f"--service-account-signing-key-file={ident.sa_signing_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]


def start_apiserver(name: str, argv: list[str], kubeconfig: Path) -> Path:
    """Start the apiserver ``name`` unless it runs; wait until ``kubeconfig`` reaches it ready."""
    if not processes.running(name):
        processes.start(name, argv)
    wait_ready(name, lambda: _kubectl_ok(kubeconfig, "get", "--raw", "/readyz"), 90, name)
    return kubeconfig


API_SERVER = f"https://{pki.NODE_IP}:{API_PORT}"
"""The main apiserver listens on the bridge address: the host reaches it there, and so do pods,
through the ``kubernetes`` Service that kube-proxy routes to it (the operator runs in-cluster)."""


def _start_main_apiserver(k8s_bin: Path) -> Path:
    kubeconfig = pki.write_kubeconfig(
        CLUSTERS_DIR / "kube-apiserver.kubeconfig", PKI, "admin", API_SERVER
    )
    argv = apiserver_argv(k8s_bin, API_PORT, "/registry", pki.NODE_IP)
    return start_apiserver("kube-apiserver", argv, kubeconfig)


def _component_kubeconfigs() -> dict[str, Path]:
    server = API_SERVER
    return {
        user: pki.write_kubeconfig(STATE_ROOT / f"{user}.kubeconfig", PKI, user, server)
        for user in ("controller-manager", "scheduler", "kubelet", "kube-proxy")
    }


def _start_control_plane(k8s_bin: Path, kubeconfigs: dict[str, Path]) -> None:
    kcm = kubeconfigs["controller-manager"]
    if not processes.running("kube-controller-manager"):
        processes.start(
            "kube-controller-manager",
            [
                str(k8s_bin / "kube-controller-manager"),
                f"--kubeconfig={kcm}",
                f"--authentication-kubeconfig={kcm}",
                f"--authorization-kubeconfig={kcm}",
                f"--service-account-private-key-file={PKI / 'sa.key'}",
                f"--root-ca-file={PKI / 'ca.crt'}",
                f"--cluster-signing-cert-file={PKI / 'ca.crt'}",
                f"--cluster-signing-key-file={PKI / 'ca.key'}",
                "--use-service-account-credentials",
                "--controllers=*",
                "--leader-elect=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--bind-address=127.0.0.1",
                "--v=1",
            ],
        )
    sched = kubeconfigs["scheduler"]
    if not processes.running("kube-scheduler"):
        processes.start(
            "kube-scheduler",
            [
                str(k8s_bin / "kube-scheduler"),
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--v=1",
            ],
        )


def containerd_config(
    base: Path,
    socket: Path,
    cni_conf_dir: Path,
    *,
    ttrpc_socket: Path | None = None,
    runc_root: Path | None = None,
) -> str:
    """A containerd config of its own (root, state, socket, CNI) for a node of the harness.

    A second node on the host also needs its own ttrpc socket and runc root (TOOLCHAIN.md).
    """
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    ttrpc = f'[ttrpc]\n  address = "{ttrpc_socket}"\n' if ttrpc_socket else ""
    runc = f'        Root = "{runc_root}"\n' if runc_root else ""
    return f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
[grpc]
  address = "{socket}"
{ttrpc}[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"
[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
{runc}  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
"""


def cni_config(
    network: str, bridge: str, subnet: str, gateway: str, ipam_dir: Path, *, portmap: bool
) -> str:
    """The CNI network of a node: a bridge, host-local IPAM on its subnet, no masquerading."""
    plugins: list[dict[str, object]] = [
        {
            "type": "bridge",
            "bridge": bridge,
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(ipam_dir),
            },
        }
    ]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    return json.dumps({"cniVersion": "1.0.0", "name": network, "plugins": plugins}, indent=2)


def _start_containerd() -> None:
    CNI_CONF_DIR.mkdir(parents=True, exist_ok=True)
    (CNI_CONF_DIR / "10-kloop.conflist").write_text(
        cni_config(
            "kloop-pods", BRIDGE, POD_CIDR, pki.NODE_IP, STATE_ROOT / "cni" / "ipam", portmap=True
        )
    )
    CONTAINERD_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    config = CONTAINERD_DIR / "config.toml"
    config.write_text(containerd_config(CONTAINERD_DIR, CONTAINERD_SOCKET, CNI_CONF_DIR))
    if not processes.running("containerd"):
        processes.start("containerd", ["containerd", "--config", str(config)])
    wait_ready(
        "containerd",
        lambda: (
            subprocess.run(
                ["ctr", "--address", str(CONTAINERD_SOCKET), "version"], capture_output=True
            ).returncode
            == 0
        ),
        30,
        "containerd",
    )


def kubelet_config(
    socket: Path, address: str, pki_dir: Path, extra: dict[str, str] | None = None
) -> str:
    """A kubelet's configuration: its containerd, serving address and certificates.

    ``extra`` adds fields a second node on the host must set apart (ports, cgroup root...).
    """
    more = "".join(f"{key}: {value}\n" for key, value in (extra or {}).items())
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: {address}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {pki_dir / "ca.crt"}}}
authorization: {{mode: Webhook}}
clusterDomain: cluster.local
tlsCertFile: {pki_dir / "kubelet.crt"}
tlsPrivateKeyFile: {pki_dir / "kubelet.key"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: 50Mi, nodefs.available: "1%", imagefs.available: "1%",
  nodefs.inodesFree: "1%"}}
registerNode: true
{more}"""


def _start_kubelet(k8s_bin: Path, kubeconfig: Path) -> None:
    KUBELET_ROOT.mkdir(parents=True, exist_ok=True)
    config = STATE_ROOT / "kubelet.yaml"
    config.write_text(kubelet_config(CONTAINERD_SOCKET, pki.NODE_IP, PKI))
    if not processes.running("kubelet"):
        processes.start(
            "kubelet",
            [
                str(k8s_bin / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={pki.NODE_NAME}",
                f"--node-ip={pki.NODE_IP}",
                f"--root-dir={KUBELET_ROOT}",
                "--v=1",
            ],
        )


def kube_proxy_config(kubeconfig: Path) -> str:
    """kube-proxy in iptables mode: Service IPs (``kubernetes``: 10.96.0.1) reach their endpoints.

    It leaves the host's kernel settings alone: ``maxPerCore: 0`` and the zero TCP timeouts keep
    conntrack as it is, and ``localhostNodePorts: false`` keeps ``route_localnet`` off (NodePorts
    on 127.0.0.1 would need it, and it would expose loopback-only services such as etcd).
    """
    return f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: {POD_CIDR}
hostnameOverride: {pki.NODE_NAME}
clientConnection: {{kubeconfig: {kubeconfig}}}
conntrack: {{maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
iptables: {{localhostNodePorts: false}}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
"""


def _start_kube_proxy(k8s_bin: Path, kubeconfig: Path) -> None:
    if processes.running("kube-proxy"):
        return
    config = STATE_ROOT / "kube-proxy.yaml"
    config.write_text(kube_proxy_config(kubeconfig))
    processes.start("kube-proxy", [str(k8s_bin / "kube-proxy"), f"--config={config}", "--v=1"])


def _kubernetes_service_routed() -> bool:
    """kube-proxy has written the rule that sends the ``kubernetes`` Service to the apiserver."""
    rules = subprocess.run(
        ["iptables", "-t", "nat", "-S", "KUBE-SERVICES"], capture_output=True, text=True
    ).stdout
    return "default/kubernetes:https" in rules


def _cleanup_kube_proxy_rules() -> None:
    """Remove the KUBE-* iptables chains kube-proxy wrote, so ``down`` leaves the host as it was."""
    binary = K8S_BIN / "kube-proxy"
    if binary.exists():
        subprocess.run([str(binary), "--cleanup"], capture_output=True, timeout=60)


def _node_ready() -> bool:
    out = _kubectl_out(
        ADMIN_KUBECONFIG,
        "get",
        "node",
        pki.NODE_NAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
    )
    return out.strip() == "True"


def _default_service_account() -> bool:
    return _kubectl_ok(ADMIN_KUBECONFIG, "get", "serviceaccount", "default", "-n", "default")


def build_images(kubernetes_src: Path) -> list[Path]:
    """The node's image tarballs, built when missing (cached under ~/.cache/kloop/images)."""
    say(f"local images: pause, busybox, {kit.kit_image()}")
    return [
        images.build_pause_image(kubernetes_src),
        images.build_busybox_image(),
        kit.build_kit_image(say),
    ]


def _import_images(tarballs: list[Path]) -> None:
    """Import into the node's containerd each tarball not imported yet (a rebuilt one again)."""
    done = set(IMPORTED.read_text().split()) if IMPORTED.exists() else set()
    for tar in tarballs:
        if tar.name in done:
            continue
        say(f"importing {tar.name}")
        images.import_image(str(CONTAINERD_SOCKET), tar)
        done.add(tar.name)
    IMPORTED.write_text("\n".join(sorted(done)) + "\n")


def any_running() -> bool:
    """Whether any component of a local cluster runs (so somebody may be using it)."""
    return any(processes.running(name) for name in processes.started_names())


def is_up() -> bool:
    """Whether the local cluster answers and its node is Ready.

    Asked a few times: a busy machine can miss one probe, and a wrong "no" would restart a
    cluster others use.
    """
    if not (ADMIN_KUBECONFIG.exists() and processes.running("kube-apiserver")):
        return False
    for attempt in range(3):
        if _node_ready():
            return True
        time.sleep(1 + attempt)
    return False


def up() -> Path:
    """Bring the whole cluster up (building what is missing); return the admin kubeconfig."""
    started = time.monotonic()
    if is_up():
        ensure_debian_packages()
        _import_images(build_images(build.kubernetes_module_dir()))
        _pin_mac(BRIDGE)  # a cluster started before the pin
        _start_kube_proxy(build.build_kubernetes(), _component_kubeconfigs()["kube-proxy"])
        wait_ready("kubernetes Service routed", _kubernetes_service_routed, 60, "kube-proxy")
        say(f"already up; KUBECONFIG={ADMIN_KUBECONFIG}")
        return ADMIN_KUBECONFIG
    if STATE_ROOT.exists() and not any_running():
        say(f"cleaning a stale cluster in {STATE_ROOT} (no component runs)")
        down()
    elif STATE_ROOT.exists():
        say("some components run: starting only the missing ones")
    ensure_debian_packages()
    etcd_bin = build.build_etcd()
    k8s_bin = build.build_kubernetes()
    tarballs = build_images(build.kubernetes_module_dir())
    say(f"certificates in {PKI}")
    pki.ensure_pki(PKI)
    ensure_bridge(BRIDGE, pki.NODE_IP, POD_CIDR)
    say("starting etcd")
    _start_etcd(etcd_bin)
    say("starting kube-apiserver")
    admin = _start_main_apiserver(k8s_bin)
    shutil.copy2(admin, ADMIN_KUBECONFIG)
    kubeconfigs = _component_kubeconfigs()
    say("starting kube-controller-manager and kube-scheduler")
    _start_control_plane(k8s_bin, kubeconfigs)
    say("starting containerd and importing images")
    _start_containerd()
    _import_images(tarballs)
    say("starting kubelet")
    _start_kubelet(k8s_bin, kubeconfigs["kubelet"])
    wait_ready("node Ready", _node_ready, 120, "kubelet")
    say("starting kube-proxy")
    _start_kube_proxy(k8s_bin, kubeconfigs["kube-proxy"])
    wait_ready("kubernetes Service routed", _kubernetes_service_routed, 60, "kube-proxy")
    wait_ready("default ServiceAccount", _default_service_account, 60, "kube-controller-manager")
    say(f"cluster up in {time.monotonic() - started:.0f}s; KUBECONFIG={ADMIN_KUBECONFIG}")
    return ADMIN_KUBECONFIG


def _kill_pod_processes() -> None:
    """Kill everything the kubelet started: it lives in the kubepods cgroups."""
    hierarchies = ("pids", "memory", "cpu,cpuacct", "systemd")
    kill_cgroup_processes(Path("/sys/fs/cgroup") / h / "kubepods" for h in hierarchies)


def kill_cgroup_processes(roots: Iterable[Path]) -> None:
    """SIGKILL every process in these cgroups and below (missing ones are skipped)."""
    for root in roots:
        if not root.exists():
            continue
        for procs in root.rglob("cgroup.procs"):
            try:
                pids = [int(p) for p in procs.read_text().split()]
            except OSError:
                continue
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _unmount_under(*roots: Path) -> None:
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if any(target == str(r) or target.startswith(f"{r}/") for r in roots):
            mounts.append(target)
    for target in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def _delete_pod_netns() -> None:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("cni-"):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def down() -> None:
    """Stop every component and container, unmount, and remove the state directory."""
    from e2e.cluster import node  # node builds on this module

    node.remove_all()
    say("stopping kubelet")
    processes.stop("kubelet")
    _kill_pod_processes()
    for shim in processes.pids_matching(str(CONTAINERD_SOCKET)):
        processes.kill_pid(shim, grace=2)
    say("stopping the control plane, containerd and etcd")
    for name in reversed(processes.started_names()):
        processes.stop(name)
    for leftover in processes.pids_matching(str(STATE_ROOT)):
        processes.kill_pid(leftover, grace=2)
    _cleanup_kube_proxy_rules()
    _unmount_under(STATE_ROOT)
    _delete_pod_netns()
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    if LOGS.exists():
        shutil.rmtree(LAST_LOGS, ignore_errors=True)
        shutil.copytree(LOGS, LAST_LOGS)
    if STATE_ROOT.exists():
        shutil.rmtree(STATE_ROOT, ignore_errors=True)
    say(f"cluster down (component logs kept in {LAST_LOGS})")


def status() -> dict[str, bool]:
    """Which components run now."""
    names = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "containerd",
        "kubelet",
        "kube-proxy",
    ]
    from e2e.cluster import node  # node builds on this module

    extra = [n for n in processes.started_names() if n.startswith("apiserver-")]
    return {name: processes.running(name) for name in names + extra} | node.status()
