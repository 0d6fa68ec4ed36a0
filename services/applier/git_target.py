"""The git target: rendered manifests committed to a branch ("rendered manifests" pattern).

One file per object (``<namespace>/<kind>-<name>.yaml``, ``_cluster/`` for cluster-scoped
objects), a commit message naming the source commit and environment, and trailers recording the
bundle digest and the commit's stream sequence so the applier can tell, before acting, whether
the target already holds this bundle or a newer one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from orchestrator.adapters import git_local
from orchestrator.domain.bundle import object_key
from orchestrator.ports import ApplyRequest, ApplyResult, TargetState

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
            f"Conveyor-Cause: {request.cause or 'commit'}\n")


class GitTarget:
    def __init__(self, repo_path: str, branch: str) -> None:
        self.repo_path = repo_path
        self.branch = branch
        self.description = f"git {branch}"

    async def current(self) -> TargetState:
        state = await asyncio.to_thread(git_local.branch_state, self.repo_path, self.branch)
        seq = state.trailers.get("Seq")
        return TargetState(digest=state.trailers.get("Digest"),
                           revision=state.trailers.get("Source-Commit"),
                           origin_seq=int(seq) if seq and seq.isdigit() else None)

    async def apply(self, request: ApplyRequest) -> ApplyResult:
        return await asyncio.to_thread(self._apply, request)

    def _apply(self, request: ApplyRequest) -> ApplyResult:
        state = git_local.branch_state(self.repo_path, self.branch)
        tree = git_local.build_tree(self.repo_path, files_for(request.objects))
        if tree == state.tree:
            return ApplyResult(False, f"{self.branch} already holds these manifests",
                               {"commit": state.head})
        commit = git_local.commit_to_branch(self.repo_path, self.branch, tree,
                                            commit_message(request), state.head)
        return ApplyResult(True, f"committed {commit[:12]} to {self.branch}",
                           {"commit": commit, "branch": self.branch})
