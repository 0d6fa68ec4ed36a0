"""The git target: rendered manifests committed to a branch ("rendered manifests" pattern).

One file per object (``<namespace>/<kind>-<name>.yaml``, ``_cluster/`` for cluster-scoped
objects), a commit message naming the source commit and environment, and trailers recording the
bundle digest, the commit's stream sequence and the event log's epoch, so the applier can tell,
before acting, whether the target already holds this bundle or a newer one, and whether those
sequences belong to this log at all.

``GitTarget`` commits to a branch of a repository on this machine (compare-and-set on the
branch head); ``RemoteGitTarget`` fetches, commits and pushes a remote one (see ``git_push``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator.adapters import git_write
from orchestrator.adapters.git_source import is_local, local_path
from orchestrator.domain.bundle import object_key
from orchestrator.errors import FencedError, PermanentError
from orchestrator.ports import ApplyRequest, ApplyResult, TargetState
from orchestrator.secrets import SecretScope
from orchestrator.targets.git.push import PathLocks, PushMirror, author_from, credentials_and_owner

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_FIRST_KEYS = ("apiVersion", "kind", "metadata")


def object_path(obj: Mapping[str, Any]) -> str:
    key = object_key(obj)
    folder = key.namespace or "_cluster"
    kind = key.kind.lower() + (f".{key.group}" if key.group else "")
    return f"{_UNSAFE.sub('_', folder)}/{_UNSAFE.sub('_', kind)}-{_UNSAFE.sub('_', key.name)}.yaml"


def to_yaml(obj: Mapping[str, Any]) -> bytes:
    ordered = {k: obj[k] for k in _FIRST_KEYS if k in obj}
    ordered.update({k: v for k, v in obj.items() if k not in ordered})
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False,
                          allow_unicode=True).encode()


def files_for(objects: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for obj in objects:
        path = object_path(obj)
        while path in files:  # names that differ only in unsafe characters
            path = path.removesuffix(".yaml") + "_.yaml"
        files[path] = to_yaml(obj)
    return files


def commit_message(request: ApplyRequest) -> str:
    subject = f"conveyor: {request.env} at {request.revision[:7]}"
    if request.message:
        subject += f" ({request.message[:60]})"
    return (f"{subject}\n\nRendered manifests of environment {request.env} from source commit "
            f"{request.revision}.\n\n"
            f"Conveyor-Environment: {request.env}\nConveyor-Source-Commit: {request.revision}\n"
            f"Conveyor-Digest: {request.digest}\nConveyor-Seq: {request.origin_seq}\n"
            f"Conveyor-Cause: {request.cause or 'commit'}\n"
            + (f"Conveyor-Log-Epoch: {request.epoch}\n" if request.epoch else "")
            + (f"Conveyor-Lease: {request.fence}\n" if request.fence else ""))


def check_fence(request: ApplyRequest, state: git_write.BranchState, where: str) -> None:
    """Refuse a write by a lease holder older than the one that wrote the head."""
    held = state.trailers.get("Lease") or ""
    if request.fence and held.isdigit() and int(held) > request.fence:
        raise FencedError(f"{where} was written under lease {held}; this applier holds "
                          f"{request.fence}, an older one: it lost the lease and must not write")


def applied_trailers(request: ApplyRequest) -> dict[str, str]:
    """The trailers that identify one apply of ``request`` on a branch."""
    match = {"Source-Commit": request.revision, "Digest": request.digest,
             "Seq": str(request.origin_seq)}
    return {**match, "Log-Epoch": request.epoch} if request.epoch else match


def target_state(state: git_write.BranchState) -> TargetState:
    """What a branch holds, per its head's ``Conveyor-*`` trailers."""
    seq = state.trailers.get("Seq")
    return TargetState(digest=state.trailers.get("Digest"),
                       revision=state.trailers.get("Source-Commit"),
                       origin_seq=int(seq) if seq and seq.isdigit() else None,
                       epoch=state.trailers.get("Log-Epoch") or None)


class GitTarget:
    def __init__(self, repo_path: str, branch: str) -> None:
        self.repo_path = repo_path
        self.branch = branch
        self.description = f"git {branch}"

    async def current(self) -> TargetState:
        state = await asyncio.to_thread(git_write.branch_state, self.repo_path, self.branch)
        return target_state(state)

    async def apply(self, request: ApplyRequest) -> ApplyResult:
        return await asyncio.to_thread(self._apply, request)

    async def has_applied(self, request: ApplyRequest) -> bool:
        found = await asyncio.to_thread(git_write.find_trailers, self.repo_path, self.branch,
                                        applied_trailers(request))
        return found is not None

    def _apply(self, request: ApplyRequest) -> ApplyResult:
        state = git_write.branch_state(self.repo_path, self.branch)
        check_fence(request, state, self.branch)
        tree = git_write.build_tree(self.repo_path, files_for(request.objects))
        if tree == state.tree:
            return ApplyResult(False, f"{self.branch} already holds these manifests",
                               {"commit": state.head})
        commit = git_write.commit_to_branch(self.repo_path, self.branch, tree,
                                            commit_message(request), state.head)
        return ApplyResult(True, f"committed {commit[:12]} to {self.branch}",
                           {"commit": commit, "branch": self.branch})


class RemoteGitTarget:
    """A branch of a remote repository: ``current`` fetches it, ``apply`` pushes to it.

    Built per delivery; ``apply`` after ``current`` builds on that fetch (a stale view costs
    one rejected push, see ``git_push``).
    """

    def __init__(self, mirror: PushMirror) -> None:
        self.mirror = mirror
        self.branch = mirror.branch
        self.description = f"git {mirror.branch} of {mirror.display_url}"
        self._fetched = False

    async def current(self) -> TargetState:
        state = await asyncio.to_thread(self.mirror.fetch_state)
        self._fetched = True
        return target_state(state)

    async def has_applied(self, request: ApplyRequest) -> bool:
        if not self._fetched:
            await self.current()
        found = await asyncio.to_thread(git_write.find_trailers, self.mirror.path, self.branch,
                                        applied_trailers(request))
        return found is not None

    async def apply(self, request: ApplyRequest) -> ApplyResult:
        files = files_for(request.objects)
        done = await asyncio.to_thread(
            self.mirror.publish, files, commit_message(request), fetched=self._fetched,
            check=lambda state: check_fence(request, state, self.description))
        self._fetched = True
        where = f"{self.branch} of {self.mirror.display_url}"
        details = {"commit": done.commit, "branch": self.branch,
                   "repo": self.mirror.display_url, "attempts": done.attempts}
        if not done.changed:
            return ApplyResult(False, f"{where} already holds these manifests", details)
        assert done.commit is not None
        return ApplyResult(True, f"pushed {done.commit[:12]} to {where}",
                           {**details, "parent": done.parent})


def _allowed_local(path: Path, dirs: tuple[str, ...], primary_repo: str) -> bool:
    if primary_repo and is_local(primary_repo) and \
            Path(local_path(primary_repo)).resolve() == path:
        return True
    return any(path == Path(d).resolve() or path.is_relative_to(Path(d).resolve())
               for d in dirs)


def git_target_for(env: str, git: Mapping[str, Any], data: Mapping[str, Any], *,
                   data_dir: Path, primary_repo: str = "",
                   locks: PathLocks | None = None,
                   scope: SecretScope | None = None,
                   local_dirs: tuple[str, ...] | None = None) -> GitTarget | RemoteGitTarget:
    """The target of ``target: {git: {branch, repo?, credentials?, author?}}``.

    ``git`` is the configuration as written: every field but ``credentials`` is expanded
    here; credentials stay ``${VAR}`` references until a transfer needs them. ``repo``
    defaults to the environment's source repository (the event's ``repo``).
    """
    reach = scope if scope is not None else SecretScope({}, ())
    expanded = reach.expand_all({k: v for k, v in git.items() if k != "credentials"})
    repo = str(expanded.get("repo") or data["repo"])
    branch = str(expanded.get("branch") or f"deploy/{env}")
    if is_local(repo):
        path = Path(local_path(repo)).resolve()
        if local_dirs is not None and not _allowed_local(path, local_dirs, primary_repo):
            # the watcher refuses such a config; an event that names one anyway is refused
            raise PermanentError(f"git target {branch}: {repo!r} is a local repository outside "
                                 "--allow-local-path", reason="LocalPathRefused")
        return GitTarget(str(path), branch)
    creds, operator = credentials_and_owner(git, repo, data, primary_repo=primary_repo)
    mirror = PushMirror(repo, branch, data_dir, credentials=creds,
                        scope=SecretScope.operator() if operator else reach,
                        author=author_from(expanded.get("author"), f"git target {branch}"),
                        locks=locks)
    return RemoteGitTarget(mirror)
