"""The git target on a remote repository: fetch, commit on top, push without force.

This is the "write back" of Flux image automation and Argo CD Image Updater. Each target (a
repository URL and a branch) has a local bare working mirror ``<data_dir>/targets/<hash>.git``
holding that one branch, fetched from the remote. Applying a bundle:

1. fetch ``refs/heads/<branch>`` (it may not exist yet: the first commit then has no parent);
2. build the tree; if it equals the fetched head's tree there is nothing to push;
3. commit it locally with the fetched head as parent, and push it to ``refs/heads/<branch>``
   *without* force: the server applies it only as a fast-forward of what we fetched;
4. a rejected push (someone else pushed in between) fetches again and commits on top of
   their head - no rebase, the rendered tree replaces the branch's content - at most
   ``MAX_ATTEMPTS`` times; then ``TransientError("TargetMoved")`` and the applier retries the
   message with backoff. A rejection although the branch did not move (a protected branch, a
   server hook) is permanent: retrying cannot help.

Exactly-once across processes comes from reading the *remote*: ``fetch_state`` fetches before
reporting the head's ``Conveyor-*`` trailers, and the applier skips a bundle the remote
already holds. ``publish`` after ``fetch_state`` builds on that fetch (optimistic: a stale
view costs one rejected push, never a lost commit).

Credentials are the source's (unexpanded ``${VAR}`` references or file paths, expanded at
each transfer by ``git_credentials``), or ``target.git.credentials`` in conveyor.yaml (same keys
as a source's); errors are translated like a fetch's and never carry a secret.

Every method here blocks: call it in a worker thread. A per-mirror lock (from the Conveyor's
``PathLocks``) serialises its transfers of one mirror; libgit2 objects never cross threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
import structlog

from orchestrator.adapters import git_credentials, git_local, git_mirror, git_transfer, git_write
from orchestrator.adapters.git_source import credentials_from_env, repo_key
from orchestrator.domain.config import DEFAULT_SOURCE
from orchestrator.domain.giturls import GitUrl
from orchestrator.errors import ConflictError, PermanentError, TransientError
from orchestrator.secrets import SecretScope

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 4  # pushes per apply; each rejection re-fetches first
OUTGOING = "refs/conveyor/outgoing"  # the local ref a push sends from


DEFAULT_AUTHOR_NAME = "Conveyor"
DEFAULT_AUTHOR_EMAIL = "conveyor@localhost"


@dataclass(frozen=True, slots=True)
class Author:
    name: str = DEFAULT_AUTHOR_NAME
    email: str = DEFAULT_AUTHOR_EMAIL

    def signature(self) -> pygit2.Signature:
        return pygit2.Signature(self.name, self.email)


def author_from(raw: Any, where: str) -> Author:
    """``target.git.author: {name, email}`` (both optional); ``Conveyor <conveyor@localhost>``."""
    if raw is None:
        return Author()
    if not isinstance(raw, Mapping) or set(raw) - {"name", "email"}:
        raise PermanentError(f"{where}: author must be a mapping with name and email",
                             reason="InvalidTarget")
    name = raw.get("name", DEFAULT_AUTHOR_NAME)
    email = raw.get("email", DEFAULT_AUTHOR_EMAIL)
    for key, value in (("name", name), ("email", email)):
        if not isinstance(value, str) or not value.strip() or any(c in value for c in "<>\n"):
            raise PermanentError(f"{where}: author.{key} must be a non-empty string without "
                                 "'<', '>' or newlines", reason="InvalidTarget")
    return Author(name.strip(), email.strip())


def target_credentials(git: Mapping[str, Any], repo: str, data: Mapping[str, Any], *,
                       primary_repo: str = "") -> dict[str, Any]:
    """The credentials that push to ``repo``, as references (never values).

    1. ``target.git.credentials`` of conveyor.yaml (``git`` is the target's *unexpanded*
       configuration, so ``${VAR}`` references reach ``git_credentials`` as references);
    2. when ``repo`` is the environment's source repository: the ``source_config`` the event
       carries (a secondary source), else ``CONVEYOR_GIT_*`` for the primary source;
    3. the primary source's when ``repo`` is the primary repository (``--repo``);
    4. none: a secondary source's or the primary's secrets are never offered to another host.
    """
    return credentials_and_owner(git, repo, data, primary_repo=primary_repo)[0]


def credentials_and_owner(git: Mapping[str, Any], repo: str, data: Mapping[str, Any], *,
                          primary_repo: str = "") -> tuple[dict[str, Any], bool]:
    """``target_credentials`` and whether the operator wrote them (``CONVEYOR_GIT_*``, expanded
    unrestricted) rather than conveyor.yaml (expanded within the operator's secret scope)."""
    if "credentials" in git:
        creds = git["credentials"]
        if not isinstance(creds, Mapping):
            raise PermanentError("target.git.credentials must be a mapping",
                                 reason="InvalidCredentials")
        return dict(creds), False
    key = repo_key(repo)
    if data.get("repo") and key == repo_key(str(data["repo"])):
        cfg = data.get("source_config")
        if isinstance(cfg, Mapping) and isinstance(cfg.get("credentials"), Mapping):
            return dict(cfg["credentials"]), False
        if str(data.get("source") or DEFAULT_SOURCE) == DEFAULT_SOURCE:
            return credentials_from_env(), True
    if primary_repo and key == repo_key(primary_repo):
        return credentials_from_env(), True
    return {}, False


class PathLocks:
    """One thread lock per working-mirror path, for one Conveyor's worker threads."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock_for(self, path: Path) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(str(path), threading.Lock())


# ``update``'s edit: (mirror path, fetched head) -> (tree, message), or None for no change
Change = Callable[[Path, str | None], tuple[str, str] | None]


@dataclass(frozen=True, slots=True)
class Published:
    """What ``publish`` did: ``commit`` is the branch head after it (None: still no branch)."""

    changed: bool
    commit: str | None
    parent: str | None
    attempts: int


class PushMirror:
    """The local working mirror of one remote target branch."""

    def __init__(self, url: str, branch: str, data_dir: Path, *,
                 credentials: Mapping[str, Any] | None = None, author: Author | None = None,
                 scope: SecretScope | None = None,
                 max_attempts: int = MAX_ATTEMPTS, locks: PathLocks | None = None,
                 kind: str = "git target", folder: str = "targets",
                 credentials_hint: str | None = None) -> None:
        self.where = f"{kind} {branch}"
        self.url: GitUrl = git_credentials.credential_free_url(
            url, where=self.where, reason="InvalidTarget", move_to="target.git.credentials")
        if not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
            raise PermanentError(f"{self.where}: not a valid branch name",
                                 reason="InvalidTarget")
        self.where = f"{kind} {branch} of {self.url.display()}"
        self.branch = branch
        self.credentials_hint = credentials_hint
        self.credentials = dict(credentials or {})
        self.scope = scope if scope is not None else SecretScope({}, ())
        git_credentials.load_credentials(self.credentials, source=self.where,
                                         scope=self.scope)  # fail early
        self.author = author or Author()
        self.max_attempts = max_attempts
        digest = hashlib.sha256(f"{self.url.key()}\n{branch}".encode()).hexdigest()[:16]
        self.path = Path(data_dir) / folder / f"{digest}.git"
        # the Conveyor's locks (Resources.git_locks); a lone mirror gets its own
        self._lock = (locks or PathLocks()).lock_for(self.path)

    @property
    def display_url(self) -> str:
        return self.url.display()

    # ----------------------------------------------------------------- blocking API

    def fetch_state(self) -> git_write.BranchState:
        """The remote branch as it is now (fetched): head, tree and Conveyor trailers."""
        with self._lock:
            self._fetch()
            return git_write.branch_state(self.path, self.branch)

    def publish(self, files: Mapping[str, bytes], message: str, *,
                fetched: bool = False,
                check: Callable[[git_write.BranchState], None] | None = None) -> Published:
        """Make the remote branch hold ``files``: commit on the remote head and push.

        ``fetched`` True builds on the last ``fetch_state`` instead of fetching again;
        ``check`` may refuse the head each attempt builds on (the lease fence) by raising.
        """
        with self._lock:
            if not fetched:
                self._fetch()
            last: ConflictError | None = None
            for attempt in range(1, self.max_attempts + 1):
                state = git_write.branch_state(self.path, self.branch)
                if check is not None:
                    check(state)
                tree = git_write.build_tree(self.path, files)
                if tree == state.tree:
                    return Published(False, state.head, state.head, attempt)
                commit = self._commit(tree, message, state.head)
                try:
                    self._push(commit)
                except ConflictError as exc:
                    last = exc
                    log.info("git_target.push_rejected", target=self.where, attempt=attempt,
                             error=exc.message)
                    self._fetch()
                    if git_local.branch_head(self.path, self.branch) == state.head:
                        raise PermanentError(
                            f"{exc.message}; the branch did not move, so the server refuses "
                            "the update itself (a protected branch or a hook?)",
                            reason="PushRejected") from None
                    continue
                self._set_local(commit)
                return Published(True, commit, state.head, attempt)
        raise TransientError(f"{self.where}: the branch kept moving, {self.max_attempts} "
                             f"pushes were rejected (last: {last.message if last else '?'})",
                             reason="TargetMoved")

    def update(self, change: Change, *, fetched: bool = False,
               push_to: str | None = None) -> Published:
        """Commit what ``change`` makes of the remote head and push it, never forced.

        ``change(mirror_path, head)`` returns ``(tree, message)``, or None when the head
        already holds what it wants. A rejected push (someone pushed meanwhile) fetches the
        new head and calls ``change`` again on it: the edit is re-applied, not rebased, so it
        can never undo theirs. ``push_to`` sends the commit to another branch (a pull
        request's head) instead; the base is still this mirror's branch. A rejection although
        the branch did not move is ``PermanentError(reason="PushRejected")``.
        """
        dest = push_to or self.branch
        with self._lock:
            if not fetched:
                self._fetch()
            last: ConflictError | None = None
            for attempt in range(1, self.max_attempts + 1):
                head = git_local.branch_head(self.path, self.branch)
                wanted = change(self.path, head)
                if wanted is None:
                    return Published(False, head, head, attempt)
                tree, message = wanted
                commit = self._commit(tree, message, head)
                try:
                    self._push(commit, dest)
                except ConflictError as exc:
                    last = exc
                    log.info("git.push_rejected", where=self.where, attempt=attempt,
                             error=exc.message)
                    self._fetch()
                    if push_to is not None or \
                            git_local.branch_head(self.path, self.branch) == head:
                        raise PermanentError(
                            f"{exc.message}; the branch did not move, so the server refuses "
                            "the update itself (a protected branch or a hook?)",
                            reason="PushRejected") from None
                    continue
                if push_to is None:
                    self._set_local(commit)
                return Published(True, commit, head, attempt)
        raise TransientError(f"{self.where}: the branch kept moving, {self.max_attempts} "
                             f"pushes were rejected (last: {last.message if last else '?'})",
                             reason="TargetMoved")

    # ----------------------------------------------------------------- internals

    def _repo(self) -> pygit2.Repository:
        git_mirror.ensure_bare(self.path)
        return git_local.open_repo(self.path)

    def _creds(self) -> git_credentials.Credentials:
        return git_credentials.load_credentials(self.credentials, source=self.where,
                                                scope=self.scope)

    def _check(self) -> str:
        if self.credentials_hint:
            return self.credentials_hint
        return ("the target's credentials (target.git.credentials, or the source's)"
                if self.credentials else
                "the target's credentials: it has none (set target.git.credentials)")

    def _fetch(self) -> None:
        ref = f"refs/heads/{self.branch}"
        git_transfer.fetch_refs(self._repo(), self.url, [f"+{ref}:{ref}"], self._creds(),
                                where=self.where, check=self._check())

    def _commit(self, tree: str, message: str, parent: str | None) -> str:
        repo = self._repo()
        sig = self.author.signature()
        parents = [pygit2.Oid(hex=parent)] if parent else []
        oid = repo.create_commit(None, sig, sig, message, pygit2.Oid(hex=tree), parents)
        return str(oid)

    def _push(self, commit: str, branch: str | None = None) -> None:
        repo = self._repo()
        dest = branch or self.branch
        outgoing = f"{OUTGOING}/{dest}"
        repo.references.create(outgoing, pygit2.Oid(hex=commit), force=True)
        if git_transfer.has_worktree(self.url):  # a checkout on this machine (`up --repo .`)
            git_transfer.push_to_checkout(self.path, self.url, f"{outgoing}:refs/heads/{dest}",
                                          where=self.where)
            return
        git_transfer.push_refs(repo, self.url, [f"{outgoing}:refs/heads/{dest}"],
                               self._creds(), where=self.where, check=self._check())

    def _set_local(self, commit: str) -> None:
        """The mirror's branch follows what the remote now holds."""
        repo = self._repo()
        repo.references.create(f"refs/heads/{self.branch}", pygit2.Oid(hex=commit), force=True)
