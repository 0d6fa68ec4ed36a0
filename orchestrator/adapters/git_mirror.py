"""Git sources over the network: a local bare mirror per source, fetched with pygit2.

``GitMirror`` keeps ``<cache_dir>/<source>-<hash>.git``, a bare repository holding the branches
Conveyor watches (``refs/heads/<branch>``, pruned when the remote deletes them). Every pygit2
call runs in a worker thread (``asyncio.to_thread``) with its own ``Repository`` object, because
libgit2 objects are not thread-safe and fetches release the GIL. Fetches of one mirror are
serialised by an ``asyncio.Lock``.

Transports: ``ssh://`` and ``user@host:path``, ``https://``/``http://`` (smart HTTP),
``git://``, ``file://`` (fetched like a remote). A plain local path is opened directly, with no
copy: its branches are read in place.

Credentials are ``git_credentials``' (re-read at every fetch, so a rotated secret is picked
up), offered by ``git_callbacks`` (host key checks, libgit2's timeouts); failures are
translated by ``git_errors``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
import structlog

from orchestrator.adapters.git_callbacks import Callbacks, connection
from orchestrator.adapters.git_credentials import (
    credential_free_url,
    load_credentials,
    scope_for,
)
from orchestrator.adapters.git_errors import Refused, translate
from orchestrator.adapters.git_transfer import no_redirects, remote_url
from orchestrator.domain.config import SourceConfig
from orchestrator.errors import PermanentError
from orchestrator.secrets import SecretScope

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The branch head after a fetch; ``head`` is None when the branch is gone (or never was).
    ``branch`` is the one asked for, or the remote's default branch when none was asked.

    ``previous`` is what the mirror held before this fetch (None on the first one), so
    ``changed`` tells a no-op poll apart; deciding about rewrites needs ``GitMirror.is_rewrite``
    against the revision the caller last processed.
    """

    source: str
    url: str
    branch: str
    head: str | None
    previous: str | None = None

    @property
    def changed(self) -> bool:
        return self.head != self.previous


def _valid_branch(branch: str) -> str:
    if not branch or not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
        raise PermanentError(f"not a valid branch name: {branch!r}", reason="InvalidSource")
    return branch


def _has_commit(repo: pygit2.Repository, sha: str) -> bool:
    try:
        return isinstance(repo.get(sha), pygit2.Commit)
    except (ValueError, KeyError):
        return False


def is_rewrite_in(repo: pygit2.Repository, old: str | None, new: str | None) -> bool:
    """True when moving from ``old`` to ``new`` is not a fast-forward (history rewritten).

    No old revision, no new one (a deleted branch), or the same one: not a rewrite. When
    ``old`` is not in ``repo`` although ``new``'s full history is, ``old`` cannot be an
    ancestor of ``new``: a rewrite.
    """
    if old is None or new is None or old == new:
        return False
    if not _has_commit(repo, new):
        raise PermanentError(f"commit {new} is not in {repo.path}", reason="CommitNotFound")
    if not _has_commit(repo, old):
        return True
    return not repo.descendant_of(new, old)


def ensure_bare(path: Path) -> None:
    """Create an empty bare repository at ``path`` unless one is there, atomically: it is
    made beside and renamed into place, so a crash never leaves half a mirror and two
    processes racing both end up with the same one."""
    if (path / "HEAD").exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".init-", dir=path.parent))
    pygit2.init_repository(str(tmp), bare=True)
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race


class GitMirror:
    """A local bare mirror of one git source (or the repository itself, for a local path)."""

    def __init__(self, url: str, cache_dir: Path | str, *, source: str = "default",
                 credentials: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None, scope: SecretScope | None = None,
                 check_now: bool = True) -> None:
        self.url = credential_free_url(url, where=f"source {source!r}", reason="InvalidSource",
                                       move_to="credentials.password or credentials.token")
        self.source = source
        self._credentials_raw = dict(credentials or {})
        self._scope = scope_for(environ, scope)
        if check_now:  # else a refused reference surfaces at each fetch, as an event
            load_credentials(self._credentials_raw, source=source, scope=self._scope)
        self._lock = asyncio.Lock()
        self._last_local: dict[str, str | None] = {}
        if self.url.scheme == "local":
            self.path = Path(self.url.path).expanduser().resolve()
        else:
            digest = hashlib.sha256(self.url.key().encode()).hexdigest()[:12]
            slug = re.sub(r"[^A-Za-z0-9_.-]", "_", source)[:40]
            self.path = Path(cache_dir) / f"{slug}-{digest}.git"

    @classmethod
    def from_source(cls, source: SourceConfig, cache_dir: Path | str, *,
                    environ: Mapping[str, str] | None = None, scope: SecretScope | None = None,
                    **kwargs: Any) -> GitMirror:
        """A mirror for a conveyor.yaml source (``url`` expanded, ``credentials`` from raw)."""
        reach = scope_for(environ, scope)
        creds = source.raw.get("credentials")
        if creds is not None and not isinstance(creds, Mapping):
            raise PermanentError(f"source {source.name!r}: credentials must be a mapping",
                                 reason="InvalidCredentials")
        return cls(reach.expand(source.url), cache_dir, source=source.name,
                   credentials=creds, scope=reach, **kwargs)

    @property
    def display_url(self) -> str:
        return self.url.display()

    # ----------------------------------------------------------------- async API

    async def fetch(self, branch: str | None = None) -> FetchResult:
        """Bring ``branch`` up to date from the remote; ``head`` is None if it is gone.

        Without a branch, every branch is mirrored and the result is the remote's default
        branch (its ``HEAD``), which also becomes the mirror's ``HEAD``.
        """
        if branch:
            _valid_branch(branch)
        async with self._lock:
            return await asyncio.to_thread(self._fetch, branch)

    async def ensure_commit(self, sha: str, branch: str | None = None) -> None:
        """Make sure ``sha`` is in the mirror: fetch ``branch`` then every branch and tag if
        it is missing. Raises PermanentError("CommitNotFound") when the remote lacks it."""
        async with self._lock:
            await asyncio.to_thread(self._ensure_commit, sha, branch)

    async def descendant_of(self, new: str, old: str) -> bool:
        """True when ``new`` has ``old`` in its history (both must be in the mirror)."""
        return await asyncio.to_thread(self._descendant_of, new, old)

    async def is_rewrite(self, old: str | None, new: str | None) -> bool:
        """True when ``old`` -> ``new`` is not a fast-forward (a force-push or rebase)."""
        if new is not None:
            await self.ensure_commit(new)
        return await asyncio.to_thread(self._is_rewrite, old, new)

    # ----------------------------------------------------------------- worker threads

    def _open(self) -> pygit2.Repository:
        if self.url.scheme == "local":
            try:
                return pygit2.Repository(str(self.path))
            except pygit2.GitError as exc:
                raise PermanentError(f"source {self.source!r}: {self.path} is not a readable "
                                     f"git repository ({exc})",
                                     reason="RepositoryNotFound") from None
        ensure_bare(self.path)
        repo = pygit2.Repository(str(self.path))
        no_redirects(repo)
        return repo

    def _transfer(self, repo: pygit2.Repository, refspecs: list[str]) -> str | None:
        """One fetch against the remote, every failure translated; returns the branch the
        remote's HEAD points to, when it says."""
        creds = load_credentials(self._credentials_raw, source=self.source, scope=self._scope)
        callbacks = Callbacks(creds, self.url)
        remote = repo.remotes.create_anonymous(remote_url(self.url))
        try:
            with connection(creds, self.url):
                remote.fetch(refspecs, callbacks=callbacks, prune=pygit2.enums.FetchPrune.PRUNE)
        except (pygit2.GitError, OSError, Refused) as exc:
            error = translate(exc, source=self.source, url=self.url, secrets=creds.secrets())
            log.warning("git.fetch_failed", source=self.source, url=self.display_url,
                        reason=error.reason, error=error.message)
            raise error from None
        for head in remote.list_heads(connect=False):  # what the fetch's connection listed
            if head.name == "HEAD" and head.symref_target:
                return str(head.symref_target).removeprefix("refs/heads/")
        return None

    @staticmethod
    def _head(repo: pygit2.Repository, branch: str) -> str | None:
        ref = repo.references.get(f"refs/heads/{branch}")
        return None if ref is None else str(ref.resolve().target)

    def _fetch(self, wanted: str | None) -> FetchResult:
        repo = self._open()
        branch = wanted or ""
        if self.url.scheme == "local":
            if not branch and not repo.head_is_unborn:
                branch = repo.head.shorthand
            head = self._head(repo, branch) if branch else None
            previous = self._last_local.get(branch)
            self._last_local[branch] = head
        elif branch:
            previous = self._head(repo, branch)
            self._transfer(repo, [f"+refs/heads/{branch}:refs/heads/{branch}"])
            head = self._head(repo, branch)
        else:  # every branch; the answer is the remote's default branch
            previous = None if repo.head_is_unborn else str(repo.head.target)
            default = self._transfer(repo, ["+refs/heads/*:refs/heads/*"])
            branch = default or ""
            if default is not None:
                repo.set_head(f"refs/heads/{default}")
            head = self._head(repo, branch) if branch else None
        log.debug("git.fetched", source=self.source, url=self.display_url, branch=branch,
                  head=head, previous=previous)
        return FetchResult(self.source, self.display_url, branch, head, previous)

    def _ensure_commit(self, sha: str, branch: str | None) -> None:
        repo = self._open()
        if _has_commit(repo, sha):
            return
        if self.url.scheme != "local":
            if branch:
                self._transfer(repo, [f"+refs/heads/{_valid_branch(branch)}:"
                                      f"refs/heads/{branch}"])
            if not _has_commit(repo, sha):
                self._transfer(repo, ["+refs/heads/*:refs/conveyor/all/heads/*",
                                      "+refs/tags/*:refs/conveyor/all/tags/*"])
        if not _has_commit(repo, sha):
            raise PermanentError(f"source {self.source!r} ({self.display_url}): commit {sha} "
                                 "is on no branch or tag of the repository",
                                 reason="CommitNotFound")

    def _descendant_of(self, new: str, old: str) -> bool:
        repo = self._open()
        for sha in (new, old):
            if not _has_commit(repo, sha):
                raise PermanentError(f"commit {sha} is not in the mirror of source "
                                     f"{self.source!r}", reason="CommitNotFound")
        return bool(repo.descendant_of(new, old))

    def _is_rewrite(self, old: str | None, new: str | None) -> bool:
        return is_rewrite_in(self._open(), old, new)

