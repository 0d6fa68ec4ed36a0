"""Where a source's repository lives on this machine: the path itself, or a local mirror.

A thin wrapper over ``GitMirror`` that the watcher, renderer and applier share, so one process
keeps one mirror (and one fetch lock) per source. The primary source (``--repo``) takes its
credentials from the process environment, as the Kubernetes manifests mount them:
``CONVEYOR_GIT_TOKEN`` (or ``CONVEYOR_GIT_USERNAME`` + ``CONVEYOR_GIT_PASSWORD``),
``CONVEYOR_GIT_SSH_KEY`` (a key file), ``CONVEYOR_GIT_SSH_PASSPHRASE`` and
``CONVEYOR_GIT_KNOWN_HOSTS`` (a known_hosts file). Empty values count as unset.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.adapters import git_local
from orchestrator.adapters.git_remote import FetchResult, GitMirror
from orchestrator.domain.giturls import parse


def is_local(repo: str) -> bool:
    try:
        return parse(repo).is_local
    except ValueError:
        return False


def local_path(repo: str) -> str:
    return str(Path(parse(repo).path).expanduser()) if is_local(repo) else repo


def credentials_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    creds: dict[str, Any] = {}
    if env.get("CONVEYOR_GIT_TOKEN"):
        creds["token"] = "${CONVEYOR_GIT_TOKEN}"
        if env.get("CONVEYOR_GIT_USERNAME"):
            creds["username"] = env["CONVEYOR_GIT_USERNAME"]
    elif env.get("CONVEYOR_GIT_PASSWORD"):
        creds["password"] = "${CONVEYOR_GIT_PASSWORD}"
        creds["username"] = env.get("CONVEYOR_GIT_USERNAME") or "git"
    if env.get("CONVEYOR_GIT_SSH_KEY"):
        creds["sshKeyFile"] = env["CONVEYOR_GIT_SSH_KEY"]
        if env.get("CONVEYOR_GIT_SSH_PASSPHRASE"):
            creds["sshPassphrase"] = "${CONVEYOR_GIT_SSH_PASSPHRASE}"
    if env.get("CONVEYOR_GIT_KNOWN_HOSTS"):
        creds["knownHostsFile"] = env["CONVEYOR_GIT_KNOWN_HOSTS"]
    return creds


_SHARED: dict[tuple[str, str], Checkout] = {}


class Checkout:
    """A source's repository on this machine (one per source and data dir per process)."""

    def __init__(self, repo: str, data_dir: Path, *, source: str = "default",
                 credentials: Mapping[str, Any] | None = None) -> None:
        self.repo = repo
        self.mirror = GitMirror(repo, data_dir / "mirrors", source=source,
                                credentials=credentials if credentials is not None
                                else credentials_from_env())

    @classmethod
    def shared(cls, repo: str, data_dir: Path) -> Checkout:
        key = (repo, str(data_dir))
        if key not in _SHARED:
            _SHARED[key] = cls(repo, data_dir)
        return _SHARED[key]

    @property
    def path(self) -> str:
        return str(self.mirror.path)

    async def fetch(self, branch: str | None = None) -> FetchResult:
        return await self.mirror.fetch(branch)

    async def ensure(self, sha: str) -> str:
        """A local path that holds ``sha``, fetching the remote when it does not yet."""
        if not await asyncio.to_thread(git_local.has_commit, self.path, sha):
            await self.mirror.ensure_commit(sha)
        return self.path
