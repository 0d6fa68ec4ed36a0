"""Secrets by reference: what a repository's ``${VAR}`` and ``*File`` references may reach.

conveyor.yaml is written by committers (and, once previews exist, by anyone who opens a pull
request). It may *name* a secret the operator provided; it must never choose which of the
host's secrets exist. Before, ``${VAR}`` expanded any variable of the process and ``*File``
keys read any file, so a commit could send ``${CONVEYOR_API_TOKEN}`` or ``/etc/shadow`` as
Basic auth to a server of its choice. Now, as Flux and Argo CD do with their Secret
references:

- ``${VAR}`` expands only names matching the operator's ``--env-allow`` globs (none by
  default) and never a ``CONVEYOR_*`` name (the api token, the primary source's credentials,
  Conveyor's own settings); any other name reads as unset, and the error says why;
- ``*File`` keys (``passwordFile``, ``tokenFile``, ``sshKeyFile``, ``knownHostsFile``, a
  kubernetes target's ``kubeconfig``, ``verify.allowedSigners``...) name files only inside the
  operator's ``--secrets-dir`` directories (mounted Kubernetes Secrets), symlinks resolved.

The operator's own references (``CONVEYOR_GIT_*`` for the primary source, built by
``git_source.credentials_from_env``) are expanded with ``SecretScope.operator()``, unrestricted.
Where a credential may be *sent* is the adapters' business: git offers credentials only to the
host of the URL they were configured for and follows no redirects (``git_callbacks``,
``git_transfer``); notifiers follow no redirects (``notify.sender``).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.domain.config import CONFIG_FILE, expand
from orchestrator.errors import ConfigError, PermanentError

RESERVED_PREFIX = "CONVEYOR_"
_UNSET = re.compile(r"environment variable ([A-Za-z_][A-Za-z0-9_]*) is not set")


@dataclass(frozen=True, slots=True)
class SecretScope:
    """The environment and files one set of references may reach. ``dirs`` None: anywhere
    (the operator's own references only)."""

    environ: Mapping[str, str] = field(repr=False)
    dirs: tuple[str, ...] | None = ()
    policy: SecretPolicy | None = None  # None: no name is refused (the operator's own)

    @staticmethod
    def operator(environ: Mapping[str, str] | None = None) -> SecretScope:
        return SecretScope(os.environ if environ is None else environ, None)

    def expand(self, value: str) -> str:
        try:
            return expand(value, self.environ)
        except ConfigError as exc:
            found = _UNSET.search(str(exc))
            name = found.group(1) if found else ""
            if self.policy is not None and not self.policy.allows(name):
                why = ("CONVEYOR_* variables are Conveyor's own and never expand in "
                       f"{CONFIG_FILE}" if name.startswith(RESERVED_PREFIX) else
                       "the operator allows names with --env-allow")
                raise ConfigError(f"environment variable {name} is not allowed in "
                                  f"{CONFIG_FILE}: {why}", file=CONFIG_FILE) from None
            raise

    def expand_all(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.expand(value)
        if isinstance(value, Mapping):
            return {k: self.expand_all(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand_all(v) for v in value]
        return value

    def path(self, raw: str, key: str) -> Path:
        """The file ``raw`` names (``${VAR}`` expanded), refused outside the secret dirs."""
        expanded = self.expand(raw.strip())
        if self.dirs is None:
            return Path(expanded)
        real = os.path.realpath(expanded)
        if not any(real == d or real.startswith(d.rstrip(os.sep) + os.sep) for d in self.dirs):
            where = (f"the operator's secret directories ({', '.join(self.dirs)})"
                     if self.dirs else "a secret directory: none is configured")
            raise PermanentError(f"{key} {expanded!r} is outside {where}; files a repository "
                                 "may name live under --secrets-dir", reason="SecretOutsideDirs")
        return Path(real)

    def read(self, raw: str, key: str) -> str:
        path = self.path(raw, key)
        try:
            return path.read_text()
        except OSError as exc:
            raise PermanentError(f"cannot read {key} {str(path)!r}: {exc.strerror}",
                                 reason="InvalidCredentials") from None


@dataclass(frozen=True, slots=True)
class SecretPolicy:
    """The operator's ``--env-allow`` globs and ``--secrets-dir`` directories."""

    env_allow: tuple[str, ...] = ()
    secrets_dirs: tuple[str, ...] = ()

    def allows(self, name: str) -> bool:
        if name.startswith(RESERVED_PREFIX):
            return False
        return any(fnmatch.fnmatchcase(name, glob) for glob in self.env_allow)

    def scope(self, environ: Mapping[str, str] | None = None) -> SecretScope:
        """What conveyor.yaml's references may reach in this process (or ``environ``): a
        live view, so a value changed later is read at the next use."""
        env = os.environ if environ is None else environ
        return SecretScope(_Allowed(env, self), tuple(os.path.realpath(d)
                                                       for d in self.secrets_dirs), self)

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None) -> SecretPolicy:
        """``CONVEYOR_ENV_ALLOW`` (commas) and ``CONVEYOR_SECRETS_DIR`` (os.pathsep)."""
        env = os.environ if environ is None else environ
        globs = tuple(g.strip() for g in env.get("CONVEYOR_ENV_ALLOW", "").split(",")
                      if g.strip())
        dirs = tuple(d for d in env.get("CONVEYOR_SECRETS_DIR", "").split(os.pathsep) if d)
        return SecretPolicy(globs, dirs)


class _Allowed(Mapping[str, str]):
    """The names of ``source`` that ``policy`` allows, read through at every lookup."""

    def __init__(self, source: Mapping[str, str], policy: SecretPolicy) -> None:
        self._source = source
        self._policy = policy

    def __getitem__(self, name: str) -> str:
        if not self._policy.allows(name):
            raise KeyError(name)
        return self._source[name]

    def __iter__(self) -> Iterator[str]:
        return (k for k in list(self._source) if self._policy.allows(k))

    def __len__(self) -> int:
        return sum(1 for _ in self)
