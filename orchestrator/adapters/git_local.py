"""pygit2 operations on repositories available on this machine (a path or a local mirror).

All functions are blocking and take a path, not a Repository: libgit2 objects are not
thread-safe, so each call opens its own Repository and is meant to run in a worker thread
(``asyncio.to_thread``). Opening is cheap (~0.1 ms) next to any real work.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from orchestrator.errors import PermanentError, TransientError

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


def _commit(repo: pygit2.Repository, sha: str | pygit2.Oid) -> pygit2.Commit:
    return _obj(repo, sha).peel(pygit2.Commit)


def _subtree(repo: pygit2.Repository, oid: pygit2.Oid) -> pygit2.Tree:
    obj = _obj(repo, oid)
    assert isinstance(obj, pygit2.Tree)
    return obj


def _tree(path: str | Path, sha: str) -> pygit2.Tree:
    """The root tree of a commit, memoised per thread (trees are immutable)."""
    trees: dict[tuple[str, str], pygit2.Tree] | None = getattr(_local, "trees", None)
    if trees is None:
        trees = _local.trees = {}
    key = (str(path), sha)
    tree = trees.get(key)
    if tree is None:
        repo = open_repo(path)
        tree = _commit(repo, sha).tree
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
    return _info(_commit(repo, sha))


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
    head = _commit(repo, new)
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
    commit = _commit(repo, sha)
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
    tree = _tree(path, sha)
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
        return bool(_tree(path, sha)[subdir].filemode == pygit2.enums.FileMode.TREE)
    except KeyError:
        return False


def tree_id(path: str | Path, sha: str, subdir: str) -> str | None:
    """The tree (or blob) id of ``subdir`` at a commit: unchanged when nothing under it changed."""
    tree = _tree(path, sha)
    if not subdir:
        return str(tree.id)
    try:
        return str(tree[subdir].id)
    except KeyError:
        return None


def iter_tree(path: str | Path, sha: str, subdir: str) -> Iterator[str]:
    repo = open_repo(path)
    tree = _commit(repo, sha).tree
    if subdir:
        tree = _subtree(repo, tree[subdir].id)

    def walk(t: pygit2.Tree, prefix: str) -> Iterator[str]:
        for entry in t:
            name = f"{prefix}{entry.name}"
            if entry.filemode == pygit2.enums.FileMode.TREE:
                yield from walk(_subtree(repo, entry.id), name + "/")
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
                yield from walk(_subtree(repo, entry.id), name + "/")

    return list(walk(_commit(repo, sha).tree, ""))


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
    commit = _commit(repo, ref.resolve().target) if ref is not None else None
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
    commit = _commit(repo, ref.resolve().target)
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
    tree = _tree(path, sha)
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
    root = _commit(repo, base).tree if base else None

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
            subtree = (_subtree(repo, current.id) if current is not None
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


def commit_tree(path: str | Path, sha: str) -> str:
    return str(_commit(open_repo(path), sha).tree.id)


def first_parent_chain(path: str | Path, head: str, limit: int = MAX_WALK) -> list[str]:
    """``head`` and its first-parent ancestors, newest first, at most ``limit``."""
    repo = open_repo(path)
    out: list[str] = []
    commit: pygit2.Commit | None = _commit(repo, head)
    while commit is not None and len(out) < limit:
        out.append(str(commit.id))
        commit = commit.parents[0] if commit.parent_ids else None
    return out


def commit_message(path: str | Path, sha: str) -> str:
    return str(_commit(open_repo(path), sha).message or "")


def paths_between(path: str | Path, old: str, new: str) -> list[str]:
    """Paths that differ between the merge base of ``old`` and ``new``, and ``new``: what a
    pull request from ``new`` into ``old``'s branch changes."""
    repo = open_repo(path)
    base = repo.merge_base(old, new)
    start = _commit(repo, base).tree if base is not None else None
    end = _commit(repo, new).tree
    diff = start.diff_to_tree(end) if start is not None else end.diff_to_tree(swap=True)
    out: set[str] = set()
    for delta in diff.deltas:
        out.add(delta.old_file.path)
        out.add(delta.new_file.path)
    return sorted(out)
