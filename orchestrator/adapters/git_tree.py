"""Contained checkouts: every tree entry checked, snapshots written without following links.

``unsafe_entry`` walks a commit's whole tree and returns the first entry that ``git fsck``
would reject (``orchestrator.domain.treepaths``), a duplicate name, or an unknown file mode, as
``"path: reason"``. The watcher asks it before announcing a commit (a bad one is
``commit.rejected`` naming the path, and nothing of it takes effect); ``export_tree`` asks it
again before writing (so a renderer in another process is protected too). Tree ids are
immutable, so subtrees found clean are remembered per thread and an unchanged subtree costs
nothing the next time.

``export_tree`` then writes defensively anyway: directories are created fresh (never an
existing one), files with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (never through a symlink), symlinks as
symlinks (never followed), blobs in chunks from a size read off the object header (a blob over
``MAX_BLOB_BYTES`` is refused before it is loaded), and the snapshot is ``0700``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pygit2

from orchestrator.adapters.git_local import open_repo
from orchestrator.domain.treepaths import entry_problem
from orchestrator.errors import PermanentError

MAX_BLOB_BYTES = 64 << 20  # GitHub refuses files over 100 MB and warns from 50 MB
CHUNK = 1 << 20
_MODES = frozenset({pygit2.enums.FileMode.TREE, pygit2.enums.FileMode.BLOB,
                    pygit2.enums.FileMode.BLOB_EXECUTABLE, pygit2.enums.FileMode.LINK,
                    pygit2.enums.FileMode.COMMIT})
_local = threading.local()


class UnsafeTreeError(PermanentError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason="UnsafeTree")


def _clean_trees() -> set[str]:
    found: set[str] | None = getattr(_local, "clean", None)
    if found is None or len(found) > 100_000:
        found = _local.clean = set()
    return found


def _tree_problem(repo: pygit2.Repository, tree: pygit2.Tree, prefix: str) -> str | None:
    clean = _clean_trees()
    key = f"{repo.path}:{tree.id}"
    if key in clean:
        return None
    seen: set[bytes] = set()
    for entry in tree:
        raw = entry.raw_name if isinstance(entry.raw_name, bytes) else str(entry.name).encode()
        shown = prefix + raw.decode("utf-8", errors="replace")
        problem = entry_problem(raw)
        if problem is not None:
            return f"{shown!r}: {problem}"
        if raw in seen:
            return f"{shown!r}: a duplicate entry (two objects under one name)"
        seen.add(raw)
        if entry.filemode not in _MODES:
            return f"{shown!r}: unknown file mode {entry.filemode:o}"
        if entry.filemode == pygit2.enums.FileMode.TREE:
            sub = repo.get(entry.id)
            if not isinstance(sub, pygit2.Tree):
                return f"{shown!r}: names a directory that is not a tree object"
            problem = _tree_problem(repo, sub, shown + "/")
            if problem is not None:
                return problem
    clean.add(key)
    return None


def unsafe_entry(path: str | Path, sha: str) -> str | None:
    """The first entry of the commit's tree that must not be checked out, as "path: why"."""
    repo = open_repo(path)
    commit = repo.get(sha)
    if commit is None:
        raise KeyError(sha)
    return _tree_problem(repo, commit.peel(pygit2.Commit).tree, "")


def _write_blob(repo: pygit2.Repository, oid: pygit2.Oid, target: Path, mode: int,
                shown: str) -> None:
    _, size = repo.odb.read_header(oid)
    if size > MAX_BLOB_BYTES:
        raise UnsafeTreeError(f"{shown!r}: {size} bytes, over the {MAX_BLOB_BYTES}-byte cap "
                              "of one file in a snapshot")
    blob = repo.get(oid)
    assert isinstance(blob, pygit2.Blob)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    with os.fdopen(fd, "wb") as out:
        data = memoryview(blob.data)  # one copy in memory, written in chunks
        for start in range(0, len(data), CHUNK):
            out.write(data[start:start + CHUNK])


def export_tree(path: str | Path, sha: str, dest: Path) -> None:
    """Write the commit's tree under ``dest`` (created, ``0700``); refuses an unsafe tree."""
    problem = unsafe_entry(path, sha)
    if problem is not None:
        raise UnsafeTreeError(f"commit {sha[:12]} holds {problem}")
    repo = open_repo(path)
    tree = repo.get(sha)
    assert tree is not None
    root = tree.peel(pygit2.Commit).tree
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.mkdir(mode=0o700)
    os.chmod(dest, 0o700)  # whatever the umask: only this user reads a snapshot

    def walk(t: pygit2.Tree, base: Path, prefix: str) -> None:
        for entry in t:
            name = str(entry.name)
            target = base / name
            shown = prefix + name
            if entry.filemode == pygit2.enums.FileMode.TREE:
                target.mkdir(mode=0o700)  # fails on anything already there: never through it
                sub = repo.get(entry.id)
                assert isinstance(sub, pygit2.Tree)
                walk(sub, target, shown + "/")
            elif entry.filemode == pygit2.enums.FileMode.LINK:
                _, size = repo.odb.read_header(entry.id)
                if size > 4096:
                    raise UnsafeTreeError(f"{shown!r}: a symlink target of {size} bytes")
                link = repo.get(entry.id)
                assert isinstance(link, pygit2.Blob)
                os.symlink(bytes(link.data).decode(errors="replace"), target)
            elif entry.filemode == pygit2.enums.FileMode.COMMIT:
                continue  # submodules are not fetched
            else:
                executable = entry.filemode == pygit2.enums.FileMode.BLOB_EXECUTABLE
                _write_blob(repo, entry.id, target, 0o700 if executable else 0o600, shown)

    walk(root, dest, "")
