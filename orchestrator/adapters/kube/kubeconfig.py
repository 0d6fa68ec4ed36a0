"""Where the Kubernetes API is and how to prove who we are: kubeconfig files and in-cluster.

``load_kubeconfig`` reads the files kubectl would (``$KUBECONFIG``, merged first-wins, or
``~/.kube/config``) and picks a context; ``load_in_cluster`` reads the pod's service account.
Both return a ``KubeConfig``, whose ``repr`` names the server and the kind of credential only.

As in client-go, user credentials are only sent over TLS: with an ``http://`` server they are
dropped (and a warning logged) rather than leaked in clear text.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from orchestrator.errors import PermanentError

from .auth import (
    Anonymous,
    BasicAuth,
    Credentials,
    ExecPlugin,
    Secret,
    StaticToken,
    TokenFile,
    exec_spec,
)

log = structlog.get_logger("conveyor.kube")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _invalid(message: str) -> PermanentError:
    return PermanentError(message, reason="InvalidConfig")


@dataclass(frozen=True, repr=False)
class KubeConfig:
    """Everything needed to reach one API server as one user."""

    server: str
    credentials: Credentials = field(default_factory=Anonymous)
    namespace: str = "default"
    ca_pem: bytes | None = None
    insecure_skip_tls_verify: bool = False
    client_cert_pem: bytes | None = None
    client_key_pem: Secret | None = None
    tls_server_name: str | None = None
    context: str = ""

    def __repr__(self) -> str:
        tls = "mTLS" if self.client_cert_pem else ("TLS" if self.is_tls else "plain HTTP")
        return (f"KubeConfig(server={self.server!r}, context={self.context!r}, "
                f"namespace={self.namespace!r}, credentials={self.credentials!r}, tls={tls})")

    @property
    def is_tls(self) -> bool:
        return self.server.startswith("https://")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for this server; client key material never touches a lasting file."""
        if not self.is_tls:
            return None
        try:
            ctx = ssl.create_default_context(
                cadata=self.ca_pem.decode() if self.ca_pem else None)
        except (ssl.SSLError, ValueError) as exc:
            raise _invalid(f"the certificate authority for {self.server} is unreadable: "
                           f"{exc}") from None
        if self.insecure_skip_tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert_pem and self.client_key_pem:
            # ssl can only load a key pair from files: write them into a private directory
            # (0700, files 0600) and delete them as soon as they are loaded.
            with tempfile.TemporaryDirectory(prefix="conveyor-tls-") as tmp:
                cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
                for path, data in ((cert, self.client_cert_pem),
                                   (key, self.client_key_pem.reveal().encode())):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                try:
                    ctx.load_cert_chain(cert, key)
                except ssl.SSLError as exc:
                    raise _invalid(f"the client certificate or key for {self.server} is "
                                   f"unreadable ({exc.reason})") from None
        return ctx


# -- kubeconfig --------------------------------------------------------------------------


def _kubeconfig_paths(path: str | os.PathLike[str] | None) -> list[Path]:
    if path is not None:
        return [Path(path)]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def _read_docs(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for p in paths:
        try:
            doc = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            continue
        except (OSError, yaml.YAMLError) as exc:
            raise _invalid(f"{p}: cannot read the kubeconfig: {exc}") from None
        if isinstance(doc, dict):
            docs.append((p, doc))
    if not docs:
        raise _invalid(f"no kubeconfig found (looked at {', '.join(map(str, paths))})")
    return docs


def _named(docs: list[tuple[Path, dict[str, Any]]], section: str,
           name: str) -> tuple[Path, dict[str, Any]]:
    """First entry called ``name`` in ``section`` across the files (kubectl's merge rule)."""
    for path, doc in docs:
        for entry in doc.get(section) or ():
            if isinstance(entry, dict) and entry.get("name") == name:
                key = section[:-1]
                return path, entry.get(key) or {}
    raise _invalid(f"kubeconfig: no {section[:-1]} named {name!r}")


def _data(entry: Mapping[str, Any], key: str, base: Path) -> bytes | None:
    """``key-data`` (base64) or ``key`` (a file, relative to the kubeconfig)."""
    if entry.get(f"{key}-data"):
        try:
            return base64.b64decode(entry[f"{key}-data"], validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(f"kubeconfig: {key}-data is not valid base64") from None
    if entry.get(key):
        path = base / str(entry[key])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise _invalid(f"kubeconfig: cannot read {key} {path}: {exc.strerror}") from None
    return None


def load_kubeconfig(path: str | os.PathLike[str] | None = None,
                    context: str | None = None) -> KubeConfig:
    docs = _read_docs(_kubeconfig_paths(path))
    name = context or next((d["current-context"] for _, d in docs if d.get("current-context")),
                           None)
    if not name:
        raise _invalid("kubeconfig: no context given and no current-context set")
    _, ctx = _named(docs, "contexts", name)
    cluster_path, cluster = _named(docs, "clusters", str(ctx.get("cluster", "")))
    user_path, user = (_named(docs, "users", str(ctx["user"])) if ctx.get("user")
                       else (cluster_path, {}))
    server = str(cluster.get("server") or "")
    if not server.startswith(("https://", "http://")):
        raise _invalid(f"kubeconfig: cluster {ctx.get('cluster')!r} has no http(s) server")
    ca = _data(cluster, "certificate-authority", cluster_path.parent)
    ubase = user_path.parent
    cert = _data(user, "client-certificate", ubase)
    key = _data(user, "client-key", ubase)
    if bool(cert) != bool(key):
        raise _invalid(f"kubeconfig: user {ctx.get('user')!r} has a client certificate without "
                       "its key (or the reverse)")
    creds = _user_credentials(user, ubase, cluster, ca)
    tls = server.startswith("https://")
    if not tls and (cert or not isinstance(creds, Anonymous)):
        log.warning("kube.credentials_not_sent", server=server,
                    reason="credentials are only sent over https, as kubectl does")
        creds, cert, key = Anonymous(), None, None
    return KubeConfig(
        server=server.rstrip("/"), credentials=creds,
        namespace=str(ctx.get("namespace") or "default"), ca_pem=ca,
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify")),
        client_cert_pem=cert, client_key_pem=Secret(key.decode()) if key else None,
        tls_server_name=cluster.get("tls-server-name"), context=name)


def _user_credentials(user: Mapping[str, Any], base: Path, cluster: Mapping[str, Any],
                      ca: bytes | None) -> Credentials:
    if user.get("auth-provider"):
        raise _invalid("kubeconfig: auth-provider plugins are gone from kubectl; use an exec "
                       "credential plugin instead")
    if user.get("exec"):
        info: dict[str, Any] = {"server": cluster.get("server"),
                                "insecure-skip-tls-verify":
                                    bool(cluster.get("insecure-skip-tls-verify"))}
        if ca:
            info["certificate-authority-data"] = base64.b64encode(ca).decode()
        if cluster.get("tls-server-name"):
            info["tls-server-name"] = cluster["tls-server-name"]
        ext = {e.get("name"): e.get("extension") for e in cluster.get("extensions") or ()}
        if "client.authentication.k8s.io/exec" in ext:
            info["config"] = ext["client.authentication.k8s.io/exec"]
        return ExecPlugin(exec_spec(user["exec"], base_dir=base, cluster=info))
    if user.get("token"):
        return StaticToken(str(user["token"]))
    if user.get("tokenFile"):
        return TokenFile(base / str(user["tokenFile"]))
    if user.get("username") and user.get("password") is not None:
        return BasicAuth(str(user["username"]), str(user["password"]))
    return Anonymous()


# -- in-cluster --------------------------------------------------------------------------


def in_cluster_available(environ: Mapping[str, str] | None = None,
                         sa_dir: Path = SERVICE_ACCOUNT_DIR) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and (sa_dir / "token").exists()


def load_in_cluster(*, environ: Mapping[str, str] | None = None,
                    sa_dir: Path = SERVICE_ACCOUNT_DIR,
                    token_reload_after: float = 60.0) -> KubeConfig:
    """The pod's service account: token file re-read for rotation, cluster CA, namespace."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise _invalid("not running in a cluster: KUBERNETES_SERVICE_HOST/PORT are unset")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"   # IPv6
    try:
        ca = (sa_dir / "ca.crt").read_bytes()
        namespace = (sa_dir / "namespace").read_text().strip() or "default"
    except OSError as exc:
        raise _invalid(f"service account files missing in {sa_dir}: {exc.strerror}") from None
    return KubeConfig(server=f"https://{host}:{port}",
                      credentials=TokenFile(sa_dir / "token", reload_after=token_reload_after),
                      namespace=namespace, ca_pem=ca, context="in-cluster")


def load_config(path: str | os.PathLike[str] | None = None,
                context: str | None = None) -> KubeConfig:
    """A kubeconfig if one is named (argument or ``$KUBECONFIG``), else in-cluster if there,
    else ``~/.kube/config``."""
    if path is None and not os.environ.get("KUBECONFIG") and in_cluster_available():
        return load_in_cluster()
    return load_kubeconfig(path, context)
