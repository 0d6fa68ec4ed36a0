"""Where a source's repository lives on this machine: the path itself, or a local mirror.

A thin wrapper over ``GitMirror`` that the watcher, renderer and applier share through one
``MirrorPool`` (built by ``orchestrator/resources.py``), so one Conveyor keeps one mirror (and
one fetch lock) per repository, and two Conveyors in one process keep theirs apart.

The primary source (``--repo``) takes its credentials from the process environment, as the
Kubernetes manifests mount them:
``CONVEYOR_GIT_TOKEN`` (or ``CONVEYOR_GIT_USERNAME`` + ``CONVEYOR_GIT_PASSWORD``),
``CONVEYOR_GIT_SSH_KEY`` (a key file), ``CONVEYOR_GIT_SSH_PASSPHRASE`` and
``CONVEYOR_GIT_KNOWN_HOSTS`` (a known_hosts file). Empty values count as unset.

What Conveyor *pushes* to the primary source (releases, promotions, rollbacks, and the
fetches of the process that does them) may use other, write-enabled credentials:
``CONVEYOR_GIT_PUSH_TOKEN_FILE`` (a mounted file, re-read at each push) or
``CONVEYOR_GIT_PUSH_TOKEN``, with ``CONVEYOR_GIT_PUSH_USERNAME`` for HTTP basic, or
``CONVEYOR_GIT_PUSH_SSH_KEY`` (a key file; ``CONVEYOR_GIT_KNOWN_HOSTS`` as above); with none of
them set, ``CONVEYOR_GIT_*``. So the read token the renderer also holds never needs push
rights (``push_credentials_from_env``; k8s/base mounts the Secret ``conveyor-gitops`` in the
api and the git-watcher only).

Other sources take theirs from conveyor.yaml (``sources.<name>.credentials``: ``${VAR}``
references and file paths, expanded at each fetch by ``GitMirror``). The watcher registers
each source in the pool with its credentials, so ``pool.shared(repo, data_dir)`` (what the
renderer calls with the ``repo`` of a ``commit.detected`` event) finds them in the same
process; ``pool.for_event(data, data_dir)`` does the same from the ``source_config`` the
event carries, for a renderer running in another process (secondary sources always carry
one, ``credentials: {}`` when anonymous, so the primary's secrets are not offered to another
host). A repository nobody registered gets the environment's credentials, as before.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.adapters import git_local
from orchestrator.adapters.git_mirror import FetchResult, GitMirror
from orchestrator.domain.giturls import parse
from orchestrator.secrets import SecretScope


def is_local(repo: str) -> bool:
    try:
        return parse(repo).is_local
    except ValueError:
        return False


def local_path(repo: str) -> str:
    return str(Path(parse(repo).path).expanduser()) if is_local(repo) else repo


def repo_key(repo: str) -> str:
    try:
        return parse(repo).key()
    except ValueError:
        return repo


def credentials_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    creds: dict[str, Any] = {}
    if env.get("CONVEYOR_GIT_TOKEN"):
        creds["token"] = "${CONVEYOR_GIT_TOKEN}"  # noqa: S105 (a reference)
        if env.get("CONVEYOR_GIT_USERNAME"):
            creds["username"] = env["CONVEYOR_GIT_USERNAME"]
    elif env.get("CONVEYOR_GIT_PASSWORD"):
        creds["password"] = "${CONVEYOR_GIT_PASSWORD}"  # noqa: S105
        creds["username"] = env.get("CONVEYOR_GIT_USERNAME") or "git"
    if env.get("CONVEYOR_GIT_SSH_KEY"):
        creds["sshKeyFile"] = env["CONVEYOR_GIT_SSH_KEY"]
        if env.get("CONVEYOR_GIT_SSH_PASSPHRASE"):
            creds["sshPassphrase"] = "${CONVEYOR_GIT_SSH_PASSPHRASE}"
    if env.get("CONVEYOR_GIT_KNOWN_HOSTS"):
        creds["knownHostsFile"] = env["CONVEYOR_GIT_KNOWN_HOSTS"]
    return creds


def push_credentials_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The credentials to push to the primary source with: ``CONVEYOR_GIT_PUSH_*`` when any
    is set, else ``CONVEYOR_GIT_*`` (references and paths, resolved at each use)."""
    env = os.environ if environ is None else environ
    creds: dict[str, Any] = {}
    if env.get("CONVEYOR_GIT_PUSH_TOKEN_FILE"):
        creds["tokenFile"] = env["CONVEYOR_GIT_PUSH_TOKEN_FILE"]
    elif env.get("CONVEYOR_GIT_PUSH_TOKEN"):
        creds["token"] = "${CONVEYOR_GIT_PUSH_TOKEN}"  # noqa: S105 (a reference)
    if env.get("CONVEYOR_GIT_PUSH_SSH_KEY"):
        creds["sshKeyFile"] = env["CONVEYOR_GIT_PUSH_SSH_KEY"]
    if not creds:
        return credentials_from_env(env)
    user = env.get("CONVEYOR_GIT_PUSH_USERNAME")
    if user and ("tokenFile" in creds or "token" in creds):
        creds["username"] = user
    if env.get("CONVEYOR_GIT_KNOWN_HOSTS"):
        creds["knownHostsFile"] = env["CONVEYOR_GIT_KNOWN_HOSTS"]
    return creds


class Checkout:
    """A source's repository on this machine (one per repository and data dir per pool).

    ``credentials`` None means the process environment's (``CONVEYOR_GIT_*``, the operator's,
    expanded unrestricted); otherwise conveyor.yaml's references, reaching only ``scope``
    (``SecretPolicy.scope()``: the operator's ``--env-allow`` and ``--secrets-dir``)."""

    def __init__(self, repo: str, data_dir: Path, *, source: str = "default",
                 credentials: Mapping[str, Any] | None = None,
                 scope: SecretScope | None = None) -> None:
        self.repo = repo
        self.source = source
        self.explicit = credentials is not None
        self.credentials = dict(credentials) if credentials is not None else None
        self.mirror = GitMirror(repo, data_dir / "mirrors", source=source,
                                credentials=credentials if credentials is not None
                                else credentials_from_env(),
                                scope=(scope or SecretScope({}, ())) if credentials is not None
                                else SecretScope.operator(),
                                check_now=False)  # the watcher reports it: fetch_failed

    @property
    def path(self) -> str:
        return str(self.mirror.path)

    async def fetch(self, branch: str | None = None) -> FetchResult:
        return await self.mirror.fetch(branch)

    async def ensure(self, sha: str) -> str:
        """A local path that holds ``sha``, fetching the remote when it does not yet."""
        if not await asyncio.to_thread(self._has, sha):
            await self.mirror.ensure_commit(sha)  # creates the mirror on first use
        return self.path

    def _has(self, sha: str) -> bool:
        return Path(self.path).exists() and git_local.has_commit(self.path, sha)


class MirrorPool:
    """The checkouts of one Conveyor, by repository and data dir."""

    def __init__(self) -> None:
        self._checkouts: dict[tuple[str, str], Checkout] = {}

    def shared(self, repo: str, data_dir: Path, *, source: str | None = None,
               credentials: Mapping[str, Any] | None = None, **kwargs: Any) -> Checkout:
        """The pool's checkout of ``repo``. With ``credentials`` (a registration, by the
        watcher or from an event) it replaces one made without or with other credentials."""
        key = (repo_key(repo), str(data_dir))
        found = self._checkouts.get(key)
        if found is not None and (credentials is None or (
                found.explicit and found.credentials == dict(credentials))):
            return found
        self._checkouts[key] = Checkout(repo, data_dir, source=source or "default",
                                        credentials=credentials, **kwargs)
        return self._checkouts[key]

    def for_event(self, data: Mapping[str, Any], data_dir: Path, *,
                  scope: SecretScope | None = None) -> Checkout:
        """The checkout for a ``commit.detected`` event's ``repo``, using the
        ``source_config`` it carries (credential references only, reaching ``scope``) when it
        has one."""
        repo = str(data["repo"])
        cfg = data.get("source_config")
        if isinstance(cfg, Mapping) and isinstance(cfg.get("credentials"), Mapping):
            return self.shared(repo, data_dir, source=str(cfg.get("name") or "default"),
                               credentials=cfg["credentials"], scope=scope)
        return self.shared(repo, data_dir)
