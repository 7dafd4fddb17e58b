"""Certificates and kubeconfigs for the local cluster, made with the openssl CLI."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

NODE_IP = "10.88.0.1"
NODE_NAME = "kloop-node"


@dataclass(frozen=True)
class Leaf:
    """One client or serving certificate signed by the cluster CA."""

    name: str
    subject: str
    usage: str  # serverAuth | clientAuth | "serverAuth,clientAuth"
    sans: str = ""


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def leaves(node_ip: str = NODE_IP, node_name: str = NODE_NAME) -> list[Leaf]:
    """Every certificate the control plane and node need, with the subjects RBAC expects."""
    apiserver_sans = (
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "DNS:kubernetes.default.svc.cluster.local,DNS:localhost,"
        f"IP:127.0.0.1,IP:10.96.0.1,IP:{node_ip}"
    )
    return [
        Leaf("apiserver", "/CN=kube-apiserver", "serverAuth", apiserver_sans),
        Leaf("admin", "/O=system:masters/CN=kloop-admin", "clientAuth"),
        Leaf("controller-manager", "/CN=system:kube-controller-manager", "clientAuth"),
        Leaf("scheduler", "/CN=system:kube-scheduler", "clientAuth"),
        Leaf("kube-proxy", "/CN=system:kube-proxy", "clientAuth"),
        Leaf(
            "kubelet",
            f"/O=system:nodes/CN=system:node:{node_name}",
            "serverAuth,clientAuth",
            f"DNS:{node_name},DNS:localhost,IP:127.0.0.1,IP:{node_ip}",
        ),
        Leaf(
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "clientAuth",
        ),
    ]


def ensure_pki(pki: Path) -> None:
    """Create the CA, the service-account key pair and every leaf certificate, unless present."""
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists():
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=kloop-local-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            cwd=pki,
        )
    ensure_service_account_keys(pki)
    for leaf in leaves():
        issue_leaf(pki, leaf)


def ensure_service_account_keys(directory: Path) -> None:
    """An RSA key pair for signing (and checking) ServiceAccount tokens, unless present."""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "sa.key").exists():
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


def issue_leaf(pki: Path, leaf: Leaf, out_dir: Path | None = None) -> Path:
    """Sign ``leaf`` with the CA in ``pki``, writing ``<name>.crt``/``.key`` to ``out_dir``.

    An existing certificate is kept, so a running component's files never change under it.
    """
    out = out_dir or pki
    out.mkdir(parents=True, exist_ok=True)
    crt = out / f"{leaf.name}.crt"
    if crt.exists():
        return crt
    ext = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={leaf.usage}",
    ]
    if leaf.sans:
        ext.append(f"subjectAltName={leaf.sans}")
    (out / f"{leaf.name}.ext").write_text("\n".join(ext) + "\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{leaf.name}.key",
        "-out",
        f"{leaf.name}.csr",
        "-subj",
        leaf.subject,
        cwd=out,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{leaf.name}.csr",
        "-CA",
        str(pki / "ca.crt"),
        "-CAkey",
        str(pki / "ca.key"),
        "-CAcreateserial",
        "-CAserial",
        str(pki / "ca.srl"),
        "-days",
        "3650",
        "-out",
        f"{leaf.name}.crt",
        "-extfile",
        f"{leaf.name}.ext",
        cwd=out,
    )
    return crt


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig_text(pki: Path, user: str, server: str, cluster: str = "kloop-local") -> str:
    """A self-contained kubeconfig (certificates embedded) for one client certificate."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {_b64(pki / "ca.crt")}
users:
- name: {user}
  user:
    client-certificate-data: {_b64(pki / f"{user}.crt")}
    client-key-data: {_b64(pki / f"{user}.key")}
contexts:
- name: {cluster}
  context: {{cluster: {cluster}, user: {user}}}
current-context: {cluster}
"""


def write_kubeconfig(
    path: Path, pki: Path, user: str, server: str, cluster: str = "kloop-local"
) -> Path:
    """Write :func:`kubeconfig_text` to ``path``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(kubeconfig_text(pki, user, server, cluster))
    path.chmod(0o600)
    return path
