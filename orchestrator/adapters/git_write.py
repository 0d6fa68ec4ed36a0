"""What Conveyor writes into a local repository with pygit2: the git target's trees and
commits on a branch (compare-and-set, with ``Conveyor-*`` trailers that say what was applied),
and tree edits on top of a commit (releases, promotions and rollbacks rewrite a few entries and
keep the rest of the tree).

Blocking, one path per call, like ``git_local`` (whose per-thread open repositories these
share): run them in a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pygit2

from orchestrator.adapters.git_local import commit_of, open_repo, subtree_of, tree_of
from orchestrator.errors import TransientError


# -- the git target: rendered manifests committed to a branch ------------------------------------
@dataclass(frozen=True, slots=True)
class BranchState:
    head: str | None
    tree: str | None
    trailers: Mapping[str, str]


TRAILER_PREFIX = "Conveyor-"


def _trailers(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in message.splitlines():
        if line.startswith(TRAILER_PREFIX) and ": " in line:
            key, value = line.split(": ", 1)
            out[key.removeprefix(TRAILER_PREFIX)] = value.strip()
    return out


def find_trailers(path: str | Path, branch: str, match: Mapping[str, str],
                  limit: int = 200) -> str | None:
    """The newest of ``branch``'s last ``limit`` first-parent commits whose ``Conveyor-*``
    trailers include every pair of ``match`` (keys without the prefix), or None."""
    repo = open_repo(path)
    ref = repo.references.get(f"refs/heads/{branch}")
    commit = commit_of(repo, ref.resolve().target) if ref is not None else None
    for _ in range(limit):
        if commit is None:
            return None
        found = _trailers(commit.message)
        if all(found.get(k) == v for k, v in match.items()):
            return str(commit.id)
        commit = commit.parents[0] if commit.parents else None
    return None


def branch_state(path: str | Path, branch: str) -> BranchState:
    repo = open_repo(path)
    ref = repo.references.get(f"refs/heads/{branch}")
    if ref is None:
        return BranchState(None, None, {})
    commit = commit_of(repo, ref.resolve().target)
    return BranchState(str(commit.id), str(commit.tree.id), _trailers(commit.message))


def build_tree(path: str | Path, files: Mapping[str, bytes]) -> str:
    """Write blobs and nested trees for ``files`` (posix paths) and return the root tree id."""
    repo = open_repo(path)

    def write(entries: Mapping[str, bytes]) -> pygit2.Oid:
        blobs = {name: data for name, data in entries.items() if "/" not in name}
        subdirs: dict[str, dict[str, bytes]] = {}
        for name, data in entries.items():
            if "/" in name:
                head, rest = name.split("/", 1)
                subdirs.setdefault(head, {})[rest] = data
        builder = repo.TreeBuilder()
        for name, data in sorted(blobs.items()):
            builder.insert(name, repo.create_blob(data), pygit2.enums.FileMode.BLOB)
        for name, sub in sorted(subdirs.items()):
            builder.insert(name, write(sub), pygit2.enums.FileMode.TREE)
        return builder.write()

    return str(write(files))


def commit_to_branch(path: str | Path, branch: str, tree: str, message: str,
                     expected_head: str | None) -> str:
    """Commit ``tree`` on ``branch`` if its head is still ``expected_head`` (compare-and-set)."""
    repo = open_repo(path)
    ref_name = f"refs/heads/{branch}"
    current = repo.references.get(ref_name)
    current_head = str(current.resolve().target) if current is not None else None
    if current_head != expected_head:
        raise TransientError(f"branch {branch} moved from {expected_head} to {current_head}",
                             reason="TargetMoved", delay=0.0)
    sig = pygit2.Signature("Conveyor", "conveyor@localhost")
    parents = [pygit2.Oid(hex=current_head)] if current_head else []
    oid = repo.create_commit(None, sig, sig, message, pygit2.Oid(hex=tree), parents)
    try:
        if current is None:
            repo.references.create(ref_name, oid)
        else:
            current.set_target(oid, f"conveyor: {message.splitlines()[0]}")
    except pygit2.GitError as exc:  # a concurrent writer holds the ref lock
        raise TransientError(f"cannot update {ref_name}: {exc}", reason="RefLocked") from None
    return str(oid)


# -- edits on top of a commit: releases, promotions and rollbacks --------------------------------
Entry = tuple[str, int]  # (object id, file mode) of one tree entry


def entry_at(path: str | Path, sha: str, file: str) -> Entry | None:
    """The tree entry (id and mode) of ``file`` at a commit; None when it is not there."""
    tree = tree_of(path, sha)
    if not file:
        return str(tree.id), int(pygit2.enums.FileMode.TREE)
    try:
        entry = tree[file]
    except KeyError:
        return None
    return str(entry.id), int(entry.filemode)


def write_blob(path: str | Path, data: bytes) -> str:
    return str(open_repo(path).create_blob(data))


def file_mode(path: str | Path, sha: str, file: str) -> int:
    """The mode to give ``file`` when rewriting it: its own, or a regular file's."""
    found = entry_at(path, sha, file)
    return found[1] if found is not None else int(pygit2.enums.FileMode.BLOB)


def replace_entries(path: str | Path, base: str | None,
                    changes: Mapping[str, Entry | None]) -> str:
    """The commit ``base``'s tree with each path replaced by an entry, or removed (None).

    Everything else keeps its id and mode (executables, symlinks, submodules): an edit of a
    few files never re-creates the rest of the tree. ``""`` replaces the whole tree.
    """
    repo = open_repo(path)
    if "" in changes:
        whole = changes[""]
        return whole[0] if whole is not None else str(repo.TreeBuilder().write())
    root = commit_of(repo, base).tree if base else None

    def rewrite(tree: pygit2.Tree | None, todo: Mapping[str, Entry | None]) -> pygit2.Oid | None:
        builder = repo.TreeBuilder(tree) if tree is not None else repo.TreeBuilder()
        nested: dict[str, dict[str, Entry | None]] = {}
        for name, entry in todo.items():
            head, sep, rest = name.partition("/")
            if sep:
                nested.setdefault(head, {})[rest] = entry
            elif entry is None:
                if builder.get(head) is not None:
                    builder.remove(head)
            else:
                builder.insert(head, pygit2.Oid(hex=entry[0]), entry[1])
        for head, sub in nested.items():
            current = builder.get(head)
            subtree = (subtree_of(repo, current.id) if current is not None
                       and current.filemode == pygit2.enums.FileMode.TREE else None)
            new = rewrite(subtree, sub)
            if new is None:
                if current is not None:
                    builder.remove(head)
            else:
                builder.insert(head, new, pygit2.enums.FileMode.TREE)
        if len(builder) == 0:
            return None
        return builder.write()

    new = rewrite(root, changes)
    return str(new) if new is not None else str(repo.TreeBuilder().write())
