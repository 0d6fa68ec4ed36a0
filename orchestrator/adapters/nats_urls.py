"""NATS server URLs and refused credentials: parsing, redaction, the user a URL names.

Shared by ``nats_bus`` (the services' connection) and the commands that open their own
connection (replay, diff); never a password in what they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

import nats

from orchestrator.adapters import nats_permissions
from orchestrator.errors import PermanentError


def server_list(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` -> both; a bare ``host:port`` gets ``nats://``."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise PermanentError("no NATS server given (--nats / CONVEYOR_NATS)",
                             reason="InvalidSetting")
    return [s if "://" in s else f"nats://{s}" for s in servers]


def redact(url: str) -> str:
    """A server URL without its user info (a token or password may be in it)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"***@{parts.hostname}"
                                     + (f":{parts.port}" if parts.port else "")))


def is_auth_error(exc: BaseException) -> bool:
    """The server refused the credentials (nats-server's ``-ERR 'Authorization Violation'``,
    or an expired/unknown user): retrying the same ones cannot help."""
    text = str(exc).lower()
    # not "Authentication Timeout": a slow client on a loaded host, worth another attempt
    return isinstance(exc, nats.errors.AuthorizationError) or \
        "authorization violation" in text or "authentication expired" in text \
        or "authentication revoked" in text


def url_user(url: str) -> str:
    """The user a (comma-separated) server URL connects as ("" without one)."""
    return unquote(urlsplit(server_list(url)[0]).username or "")


def inbox_of(url: str) -> str:
    """The inbox prefix a connection with ``url``'s user must use (``nats_permissions``)."""
    return nats_permissions.inbox_prefix(url_user(url))


def unauthorized(servers: Sequence[str]) -> PermanentError:
    """The error for refused credentials: the servers and the user, never the password."""
    users = sorted({unquote(urlsplit(s).username or "") for s in servers})
    who = (f"user {', '.join(repr(u) for u in users)}" if any(users)
           else "a connection without credentials")
    shown = ", ".join(redact(s) for s in servers)
    return PermanentError(
        f"NATS at {shown} refused {who} (authorization violation): check the user and "
        "password (CONVEYOR_NATS_USER / CONVEYOR_NATS_PASSWORD, or the data dir's "
        "nats/credentials.json for the embedded server)", reason="NatsUnauthorized")
