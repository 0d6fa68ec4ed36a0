"""pygit2 operations on repositories available on this machine (a path or a local mirror).

All functions are blocking and take a path, not a Repository: libgit2 objects are not
thread-safe, so each call opens its own Repository and is meant to run in a worker thread
(``asyncio.to_thread``). Opening is cheap (~0.1 ms) next to any real work. What Conveyor
writes (the git target's commits, tree edits) is ``git_write``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from orchestrator.errors import PermanentError

MAX_WALK = 1000  # commits announced per chunk; a larger burst is announced in several chunks


@dataclass(frozen=True, slots=True)
class CommitInfo:
    sha: str
    parent: str | None  # first parent
    subject: str
    author: str
    committed_at: str  # ISO 8601 UTC
    merged: tuple[str, ...] = ()  # the other parents, when it is a merge commit

    @property
    def short(self) -> str:
        return self.sha[:7]


_local = threading.local()


def open_repo(path: str | Path) -> pygit2.Repository:
    """This thread's Repository for ``path``, opened once per thread and reused.

    Opening costs ~0.1 ms and a watcher checking 200 environments opens thousands of times per
    commit; libgit2 objects must not cross threads, so the cache is per thread. References and
    new objects written by other processes are still seen (libgit2 re-reads them on lookup).
    """
    cache: dict[str, pygit2.Repository] | None = getattr(_local, "repos", None)
    if cache is None:
        cache = _local.repos = {}
    key = str(path)
    repo = cache.get(key)
    if repo is None:
        try:
            repo = pygit2.Repository(key)
        except pygit2.GitError as exc:
            raise PermanentError(f"{path} is not a git repository: {exc}",
                                 reason="NotARepository") from None
        if len(cache) > 32:
            cache.clear()
        cache[key] = repo
    return repo


def _obj(repo: pygit2.Repository, oid: str | pygit2.Oid) -> pygit2.Object:
    obj = repo.get(oid)
    if obj is None:
        raise KeyError(str(oid))
    return obj


def commit_of(repo: pygit2.Repository, sha: str | pygit2.Oid) -> pygit2.Commit:
    return _obj(repo, sha).peel(pygit2.Commit)


def subtree_of(repo: pygit2.Repository, oid: pygit2.Oid) -> pygit2.Tree:
    obj = _obj(repo, oid)
    assert isinstance(obj, pygit2.Tree)
    return obj


def tree_of(path: str | Path, sha: str) -> pygit2.Tree:
    """The root tree of a commit, memoised per thread (trees are immutable)."""
    trees: dict[tuple[str, str], pygit2.Tree] | None = getattr(_local, "trees", None)
    if trees is None:
        trees = _local.trees = {}
    key = (str(path), sha)
    tree = trees.get(key)
    if tree is None:
        repo = open_repo(path)
        tree = commit_of(repo, sha).tree
        if len(trees) > 64:
            trees.clear()
        trees[key] = tree
    return tree


def branch_head(path: str | Path, branch: str) -> str | None:
    repo = open_repo(path)
    ref = repo.references.get(f"refs/heads/{branch}")
    if ref is None:
        return None
    return str(ref.resolve().target)


def _info(commit: pygit2.Commit) -> CommitInfo:
    when = datetime.fromtimestamp(commit.commit_time, UTC).isoformat().replace("+00:00", "Z")
    return CommitInfo(
        sha=str(commit.id),
        parent=str(commit.parent_ids[0]) if commit.parent_ids else None,
        subject=(commit.message or "").strip().splitlines()[0] if commit.message else "",
        author=f"{commit.author.name} <{commit.author.email}>",
        committed_at=when,
        merged=tuple(str(p) for p in commit.parent_ids[1:]),
    )


def commit_info(path: str | Path, sha: str) -> CommitInfo:
    repo = open_repo(path)
    return _info(commit_of(repo, sha))


def has_commit(path: str | Path, sha: str) -> bool:
    repo = open_repo(path)
    try:
        return repo.get(sha) is not None
    except (ValueError, KeyError):
        return False


def is_ancestor(path: str | Path, old: str, new: str) -> bool:
    repo = open_repo(path)
    if old == new:
        return True
    try:
        return bool(repo.descendant_of(new, old))
    except (pygit2.GitError, ValueError, KeyError):
        return False


def new_commits(path: str | Path, old: str | None, new: str,
                limit: int | None = None) -> list[CommitInfo]:
    """Commits after ``old`` up to ``new`` along first parents, oldest first, at most ``limit``.

    ``old`` None means "just ``new``". When ``old`` is not an ancestor (a rewrite) the walk
    stops at the merge base. A longer history yields its *oldest* ``limit`` commits: the caller
    announces them, moves its cursor to the last one and asks again, so a burst of any size is
    announced in order, in bounded chunks, and no commit is skipped.
    """
    repo = open_repo(path)
    head = commit_of(repo, new)
    if old is None:
        return [_info(head)]
    stop: set[str] = {old}
    if not is_ancestor(path, old, new):
        base = repo.merge_base(old, new)
        stop = {str(base)} if base is not None else set()
    chain: list[pygit2.Commit] = []
    commit: pygit2.Commit | None = head
    while commit is not None and str(commit.id) not in stop:
        chain.append(commit)
        commit = commit.parents[0] if commit.parent_ids else None
    chain.reverse()
    return [_info(c) for c in chain[:MAX_WALK if limit is None else limit]]


def changed_paths(path: str | Path, sha: str) -> list[str]:
    """Paths changed by a commit against its first parent (all paths for a root commit)."""
    repo = open_repo(path)
    commit = commit_of(repo, sha)
    if commit.parent_ids:
        diff = commit.parents[0].tree.diff_to_tree(commit.tree)
    else:
        diff = commit.tree.diff_to_tree(swap=True)
    paths: set[str] = set()
    for delta in diff.deltas:
        paths.add(delta.old_file.path)
        paths.add(delta.new_file.path)
    return sorted(paths)


def read_file(path: str | Path, sha: str, file: str,
              max_bytes: int | None = None) -> bytes | None:
    """The blob at ``file`` (None: absent or not a file). With ``max_bytes`` a larger blob is
    refused from its object header, before it is loaded (``PermanentError("FileTooLarge")``)."""
    repo = open_repo(path)
    tree = tree_of(path, sha)
    try:
        entry = tree[file]
    except KeyError:
        return None
    if entry.filemode == pygit2.enums.FileMode.TREE:
        return None
    if max_bytes is not None:
        _, size = repo.odb.read_header(entry.id)
        if size > max_bytes:
            raise PermanentError(f"{file} is {size} bytes, over the {max_bytes}-byte limit",
                                 reason="FileTooLarge")
    obj = repo.get(entry.id)
    if not isinstance(obj, pygit2.Blob):
        return None
    return bytes(obj.data)


def is_tree(path: str | Path, sha: str, subdir: str) -> bool:
    """Is ``subdir`` a directory at the commit (read from the tree entry, no blob loaded)?"""
    if not subdir:
        return True
    try:
        return bool(tree_of(path, sha)[subdir].filemode == pygit2.enums.FileMode.TREE)
    except KeyError:
        return False


def tree_id(path: str | Path, sha: str, subdir: str) -> str | None:
    """The tree (or blob) id of ``subdir`` at a commit: unchanged when nothing under it changed."""
    tree = tree_of(path, sha)
    if not subdir:
        return str(tree.id)
    try:
        return str(tree[subdir].id)
    except KeyError:
        return None


def iter_tree(path: str | Path, sha: str, subdir: str) -> Iterator[str]:
    repo = open_repo(path)
    tree = commit_of(repo, sha).tree
    if subdir:
        tree = subtree_of(repo, tree[subdir].id)

    def walk(t: pygit2.Tree, prefix: str) -> Iterator[str]:
        for entry in t:
            name = f"{prefix}{entry.name}"
            if entry.filemode == pygit2.enums.FileMode.TREE:
                yield from walk(subtree_of(repo, entry.id), name + "/")
            else:
                yield name

    yield from walk(tree, f"{subdir}/" if subdir else "")


def resolve(path: str | Path, rev: str) -> str:
    """A branch, tag, ``HEAD`` or (abbreviated) sha -> the commit's full sha."""
    repo = open_repo(path)
    try:
        return str(repo.revparse_single(rev).peel(pygit2.Commit).id)
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise PermanentError(f"{rev!r} is not a revision of {path}", reason="UnknownRevision") \
            from exc


def list_dirs(path: str | Path, sha: str) -> list[str]:
    """Every directory of the commit's tree (``a``, ``a/b``, ...): what directory generators
    match against. Only tree objects are read, never a blob."""
    repo = open_repo(path)

    def walk(t: pygit2.Tree, prefix: str) -> Iterator[str]:
        for entry in t:
            if entry.filemode == pygit2.enums.FileMode.TREE:
                name = f"{prefix}{entry.name}"
                yield name
                yield from walk(subtree_of(repo, entry.id), name + "/")

    return list(walk(commit_of(repo, sha).tree, ""))


def commit_tree(path: str | Path, sha: str) -> str:
    return str(commit_of(open_repo(path), sha).tree.id)


def first_parent_chain(path: str | Path, head: str, limit: int = MAX_WALK) -> list[str]:
    """``head`` and its first-parent ancestors, newest first, at most ``limit``."""
    repo = open_repo(path)
    out: list[str] = []
    commit: pygit2.Commit | None = commit_of(repo, head)
    while commit is not None and len(out) < limit:
        out.append(str(commit.id))
        commit = commit.parents[0] if commit.parent_ids else None
    return out


def commit_message(path: str | Path, sha: str) -> str:
    return str(commit_of(open_repo(path), sha).message or "")


def paths_between(path: str | Path, old: str, new: str) -> list[str]:
    """Paths that differ between the merge base of ``old`` and ``new``, and ``new``: what a
    pull request from ``new`` into ``old``'s branch changes."""
    repo = open_repo(path)
    base = repo.merge_base(old, new)
    start = commit_of(repo, base).tree if base is not None else None
    end = commit_of(repo, new).tree
    diff = start.diff_to_tree(end) if start is not None else end.diff_to_tree(swap=True)
    out: set[str] = set()
    for delta in diff.deltas:
        out.add(delta.old_file.path)
        out.add(delta.new_file.path)
    return sorted(out)
