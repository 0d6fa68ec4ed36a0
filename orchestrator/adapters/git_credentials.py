"""Credentials of a git source or target: resolved from the environment and files, never
written in conveyor.yaml.

conveyor.yaml ``sources.<name>.credentials`` (and ``target.git.credentials``). Secrets are read
only from the environment (``${VAR}``, nothing else allowed in that field) or from files
(Kubernetes secret mounts, re-read at every fetch so a rotated secret is picked up), reaching
only what the ``SecretScope`` allows (``orchestrator.secrets``):

    credentials:
      username: deploy                   # HTTP user / SSH user when the URL names none
      password: ${GIT_PASSWORD}          # or passwordFile: /var/run/secrets/git/password
      token: ${GIT_TOKEN}                # or tokenFile: /var/run/secrets/git/token
      tokenAuth: basic                   # basic (default): user 'x-access-token' unless
                                         #   username is set; bearer: 'Authorization: Bearer'
      sshKeyFile: /var/run/secrets/git/id_ed25519   # or sshKey: ${GIT_SSH_KEY} (key text)
      sshPublicKeyFile: ...              # optional; derived from the private key if absent
      sshPassphrase: ${GIT_SSH_PASSPHRASE}          # or sshPassphraseFile: path
      knownHostsFile: /var/run/secrets/git/known_hosts   # or knownHosts: | (inline lines)

How they are offered to a server is ``git_callbacks``; how a refusal is worded, ``git_errors``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.domain.giturls import GitUrl, parse
from orchestrator.errors import PermanentError
from orchestrator.secrets import SecretScope

_ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
CREDENTIAL_KEYS = frozenset({
    "username", "password", "passwordFile", "token", "tokenFile", "tokenAuth", "sshKey",
    "sshKeyFile", "sshPublicKeyFile", "sshPassphrase", "sshPassphraseFile", "knownHosts",
    "knownHostsFile",
})


@dataclass(frozen=True, slots=True)
class Credentials:
    """Resolved credentials of one source. Secret fields never appear in ``repr``."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    bearer: str | None = field(default=None, repr=False)
    ssh_key_file: Path | None = None
    ssh_key: str | None = field(default=None, repr=False)
    ssh_public_key_file: Path | None = None
    ssh_passphrase: str | None = field(default=None, repr=False)
    known_hosts: str | None = None

    @property
    def has_ssh_key(self) -> bool:
        return self.ssh_key_file is not None or self.ssh_key is not None

    def secrets(self) -> list[str]:
        """Every secret value, to scrub from messages."""
        values = [self.password, self.bearer, self.ssh_key, self.ssh_passphrase]
        return [v for v in values if v]


def _secret(raw: Mapping[str, Any], key: str, scope: SecretScope, source: str) -> str | None:
    """``key`` (a ``${VAR}`` reference) or ``keyFile`` (a path); never a literal secret."""
    inline, path = raw.get(key), raw.get(f"{key}File")
    if inline is not None and path is not None:
        raise PermanentError(f"source {source!r}: credentials.{key} and {key}File are both "
                             "set; keep one", reason="InvalidCredentials")
    if inline is not None:
        if not isinstance(inline, str) or not _ENV_REF.match(inline.strip()):
            raise PermanentError(
                f"source {source!r}: credentials.{key} must be an environment reference like "
                f"${{GIT_{key.upper()}}}, or use {key}File; secrets are never written in "
                "conveyor.yaml", reason="InvalidCredentials")
        value: str = _in_source(source, lambda: scope.expand(inline.strip()))
        return value
    if path is not None:
        return _read_file(path, f"{key}File", scope, source).rstrip("\r\n")
    return None


def _in_source(source: str, get: Any) -> Any:
    """``get()``, its refusal (a reference out of the scope) naming the source."""
    try:
        return get()
    except PermanentError as exc:
        raise PermanentError(f"source {source!r}: credentials: {exc.message}",
                             reason="InvalidCredentials") from None


def _file_path(path: Any, key: str, scope: SecretScope, source: str) -> Path:
    if not isinstance(path, str) or not path.strip():
        raise PermanentError(f"source {source!r}: credentials.{key} must be a file path",
                             reason="InvalidCredentials")
    found: Path = _in_source(source, lambda: scope.path(path, f"credentials.{key}"))
    return found


def _read_file(path: Any, key: str, scope: SecretScope, source: str) -> str:
    resolved = _file_path(path, key, scope, source)
    try:
        return resolved.read_text()
    except OSError as exc:
        raise PermanentError(f"source {source!r}: cannot read credentials.{key} "
                             f"{resolved}: {exc.strerror}", reason="InvalidCredentials") from None


def credential_free_url(url: str, *, where: str, reason: str, move_to: str) -> GitUrl:
    """``url`` parsed, refused when it is not one or embeds a password (secrets go in
    credentials, never in a URL that events and logs show): errors name ``where``, with
    ``reason``, and say to move the password to ``move_to``."""
    try:
        parsed = parse(url)
    except ValueError as exc:
        raise PermanentError(f"{where}: {exc}", reason=reason) from None
    if parsed.password is not None:
        raise PermanentError(f"{where}: the URL {parsed.display()} embeds a password; move it "
                             f"to {move_to}", reason=reason)
    return parsed


def scope_for(environ: Mapping[str, str] | None,
              scope: SecretScope | None) -> SecretScope:
    """``scope``; else an explicit ``environ`` (the caller's own, unrestricted); else nothing:
    a reference reaches only what a scope was given for."""
    if scope is not None:
        return scope
    return SecretScope.operator(environ) if environ is not None else SecretScope({}, ())


def load_credentials(raw: Mapping[str, Any] | None, *, source: str = "default",
                     environ: Mapping[str, str] | None = None,
                     scope: SecretScope | None = None) -> Credentials:
    """Resolve a ``credentials:`` mapping (see the module docstring) from env and files,
    reaching only what ``scope`` allows (``orchestrator.secrets``)."""
    if not raw:
        return Credentials()
    reach = scope_for(environ, scope)
    unknown = set(raw) - CREDENTIAL_KEYS
    if unknown:
        raise PermanentError(f"source {source!r}: unknown credentials key(s) "
                             f"{sorted(unknown)} (known: {sorted(CREDENTIAL_KEYS)})",
                             reason="InvalidCredentials")
    username = raw.get("username")
    if username is not None:
        username = _in_source(source, lambda: reach.expand(str(username)))
    password = _secret(raw, "password", reach, source)
    token = _secret(raw, "token", reach, source)
    if password is not None and token is not None:
        raise PermanentError(f"source {source!r}: set credentials.password or token, not both",
                             reason="InvalidCredentials")
    mode = str(raw.get("tokenAuth", "basic")).lower()
    if mode not in ("basic", "bearer"):
        raise PermanentError(f"source {source!r}: credentials.tokenAuth must be basic or "
                             "bearer", reason="InvalidCredentials")
    bearer = None
    if token is not None and mode == "bearer":
        bearer = token
    elif token is not None:
        password, username = token, username or "x-access-token"
    key_file = raw.get("sshKeyFile")  # a path handed to libssh2, which reads the file
    key = _secret({"sshKey": raw["sshKey"]} if "sshKey" in raw else {}, "sshKey", reach,
                  source)
    if key is not None and key_file is not None:
        raise PermanentError(f"source {source!r}: credentials.sshKey and sshKeyFile are both "
                             "set; keep one", reason="InvalidCredentials")
    key_path = _file_path(key_file, "sshKeyFile", reach, source) if key_file else None
    if key_path is not None and not key_path.is_file():
        raise PermanentError(f"source {source!r}: credentials.sshKeyFile {key_file} is not a "
                             "readable file", reason="InvalidCredentials")
    known = raw.get("knownHosts")
    if raw.get("knownHostsFile") is not None:
        if known is not None:
            raise PermanentError(f"source {source!r}: credentials.knownHosts and "
                                 "knownHostsFile are both set; keep one",
                                 reason="InvalidCredentials")
        known = _read_file(raw["knownHostsFile"], "knownHostsFile", reach, source)
    pub = raw.get("sshPublicKeyFile")
    return Credentials(
        username=username, password=password, bearer=bearer,
        ssh_key_file=key_path, ssh_key=key,
        ssh_public_key_file=_file_path(pub, "sshPublicKeyFile", reach, source) if pub else None,
        ssh_passphrase=_secret(raw, "sshPassphrase", reach, source),
        known_hosts=None if known is None else str(known),
    )
