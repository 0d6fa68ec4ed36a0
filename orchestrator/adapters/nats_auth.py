"""Credentials of the embedded nats-server: generated once, kept 0600 in its data dir.

Without them any local process could connect to the loopback port and publish a forged
``render.succeeded`` that the applier would deploy. ``conveyor up`` therefore starts its
nats-server with an ``authorization`` block read from a config file (never on the command line:
``/proc/PID/cmdline`` is readable by every local user): the operator's user (``conveyor``,
every permission: ``up``'s bootstrap connection and the operator's commands) and one user per
service with only its own subjects (``nats_permissions``). The passwords are generated with
``secrets`` on first start and reused afterwards, so a server restarted on the same data dir
(a crash, ``conveyor up`` again) accepts the clients that are reconnecting to it.

Clients get the credentials inside the URL (``nats://renderer:PASSWORD@127.0.0.1:PORT``), the
form nats-py reads; logs strip ``user:password@`` from URLs (orchestrator.logging) and
``redacted`` does the same for error messages. Another process of the operator reads them
from ``<data dir>/nats/credentials.json`` (``resolve``: ``conveyor replay --nats URL
--data-dir DIR``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

from orchestrator.adapters import nats_permissions

EMBEDDED_DIR: Final = "nats"  # the embedded server's directory under the data dir
CREDENTIALS_FILE: Final = "credentials.json"
SERVER_CONFIG_FILE: Final = "nats-server.conf"
USER: Final = "conveyor"
PRIVATE: Final = 0o600


@dataclass(frozen=True, slots=True)
class BusCredentials:
    user: str
    password: str = field(repr=False)
    # the embedded server's: a password per service user (nats_permissions.GRANTS)
    services: Mapping[str, str] = field(default_factory=dict, repr=False)

    def of(self, service: str) -> BusCredentials:
        """The credentials of one service's user."""
        return BusCredentials(service, self.services[service])


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (no window in which the
    file exists with the umask's mode), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def load(directory: Path) -> BusCredentials | None:
    """The credentials kept in ``directory``, or None when there are none (never creates)."""
    try:
        data = json.loads((directory / CREDENTIALS_FILE).read_text())
        return BusCredentials(str(data["user"]), str(data["password"]),
                              {str(k): str(v) for k, v in dict(data.get("services")
                                                                or {}).items()})
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError):
        return None


def has_credentials(url: str) -> bool:
    """Whether every server of ``url`` (comma-separated) carries ``user:password@``."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    return bool(servers) and all("@" in urlsplit(u if "://" in u else f"nats://{u}").netloc
                                 for u in servers)


def with_credentials_all(url: str, user: str, password: str) -> str:
    """Every server of ``url`` (comma-separated) with these credentials, unless it has its own."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    return ",".join(u if has_credentials(u) else with_credentials(u, user, password)
                    for u in servers)


def resolve(url: str, environ: Mapping[str, str], *, data_dir: Path | None = None) -> str:
    """``--nats URL`` with bus credentials, unless every server carries its own: this
    service's (``CONVEYOR_NATS_USER`` and ``CONVEYOR_NATS_PASSWORD``, as k8s/base sets them),
    else, for the operator's commands (``replay``, ``diff``, ``release --repo``...) given
    ``data_dir``, the operator user that ``conveyor up --data-dir DIR`` generated
    (``DIR/nats/credentials.json``)."""
    if not url or has_credentials(url):
        return url
    user = environ.get("CONVEYOR_NATS_USER", "").strip()
    password = environ.get("CONVEYOR_NATS_PASSWORD", "").strip()  # a Secret's newline too
    if user and password:
        return with_credentials_all(url, user, password)
    creds = load(data_dir / EMBEDDED_DIR) if data_dir is not None else None
    if creds is not None:
        return with_credentials_all(url, creds.user, creds.password)
    return url


def load_or_create(directory: Path) -> BusCredentials:
    """The credentials kept in ``directory``, generated there on first use: the operator's
    user and one per service. A file from before per-service users keeps its operator
    password and gains the services'."""
    path = directory / CREDENTIALS_FILE
    creds = load(directory)
    if creds is None:
        creds = BusCredentials(USER, secrets.token_urlsafe(32))
    elif stat.S_IMODE(path.stat().st_mode) != PRIVATE:
        path.chmod(PRIVATE)  # someone widened it: narrow it again before using it
    missing = [u for u in nats_permissions.SERVICES if u not in creds.services]
    if missing:
        creds = BusCredentials(creds.user, creds.password, {
            **creds.services, **{u: secrets.token_urlsafe(32) for u in missing}})
        write_private(path, json.dumps({"user": creds.user, "password": creds.password,
                                        "services": dict(creds.services)}))
    return creds


def authorization_block(creds: BusCredentials) -> str:
    """nats-server's config block: the operator's user with every permission, and each
    service's user with only its own (``nats_permissions``)."""
    # token_urlsafe's alphabet needs no escaping inside a quoted string
    passwords = {u: json.dumps(p) for u, p in creds.services.items()}
    users = nats_permissions.users_block(passwords, json.dumps(creds.password), indent="  ")
    users = users.replace(f"{{user: {nats_permissions.OPERATOR},",
                          f"{{user: {json.dumps(creds.user)},", 1)
    return "authorization {\n" + "\n".join("  " + line for line in users.splitlines()) + "\n}\n"


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password@`` (percent-encoded) in front of its host."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def redacted(url: str) -> str:
    """``url`` without its credentials, for messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))
