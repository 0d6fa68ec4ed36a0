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
symlinks (never followed), and the snapshot is ``0700``.

Blobs: the size is read off the object header first, and a blob over the operator's limit
(``--max-file-bytes``, 64 MiB by default) is refused before anything of it is loaded, naming
the file, its size and the limit (``FileTooLargeError``: a ``render.failed``). libgit2 loads
a blob whole (``Blob.data``; ``pygit2.BlobIO`` streams only the filtered output of a blob it
has loaded), so a blob from ``STREAM_ABOVE`` up is written by ``git cat-file blob``, which
streams a loose object, and a packed one stored whole (git packs blobs over
``core.bigFileThreshold``, 512 MiB, undeltified), straight into the file this process opened
(``O_EXCL|O_NOFOLLOW``): the memory of the process stays bounded whatever the file's size
(``python -m benchmarks.blob_export``). Smaller blobs, and all of them where git is not
installed, are read through libgit2 and written in chunks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pygit2

from orchestrator.adapters.git_local import open_repo
from orchestrator.domain.treepaths import entry_problem
from orchestrator.errors import PermanentError
from orchestrator.rendering.model import MAX_FILE_BYTES

MAX_BLOB_BYTES = MAX_FILE_BYTES  # the default of --max-file-bytes
CHUNK = 1 << 20
STREAM_ABOVE = 4 << 20  # blobs from this size are streamed by git instead of loaded
_MODES = frozenset({pygit2.enums.FileMode.TREE, pygit2.enums.FileMode.BLOB,
                    pygit2.enums.FileMode.BLOB_EXECUTABLE, pygit2.enums.FileMode.LINK,
                    pygit2.enums.FileMode.COMMIT})
_local = threading.local()


class UnsafeTreeError(PermanentError):
    def __init__(self, message: str, reason: str = "UnsafeTree") -> None:
        super().__init__(message, reason=reason)


class FileTooLargeError(UnsafeTreeError):
    """A file over the operator's ``--max-file-bytes``."""

    def __init__(self, shown: str, size: int, limit: int) -> None:
        super().__init__(f"{shown!r}: {size} bytes, over the {limit}-byte limit of one file "
                         "in a snapshot (the operator's --max-file-bytes)",
                         reason="FileTooLarge")
        self.size = size
        self.limit = limit


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
                shown: str, limit: int) -> None:
    _, size = repo.odb.read_header(oid)
    if size > limit:
        raise FileTooLargeError(shown, size, limit)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    with os.fdopen(fd, "wb") as out:
        if size >= STREAM_ABOVE and _stream_blob(repo, oid, out.fileno(), size, shown):
            return
        blob = repo.get(oid)
        assert isinstance(blob, pygit2.Blob)
        data = memoryview(blob.data)  # one copy in memory, written in chunks
        for start in range(0, len(data), CHUNK):
            out.write(data[start:start + CHUNK])


def _stream_blob(repo: pygit2.Repository, oid: pygit2.Oid, fd: int, size: int,
                 shown: str) -> bool:
    """Stream the blob into ``fd`` with ``git cat-file blob``; False where git is missing
    (the caller reads it through libgit2 instead)."""
    git = shutil.which("git")
    if git is None:
        return False
    env = {"PATH": os.environ.get("PATH", ""), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, "HOME": os.devnull, "LC_ALL": "C"}
    done = subprocess.run([git, "--git-dir", repo.path, "cat-file", "blob", str(oid)],
                          stdout=fd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                          timeout=600, check=False)
    written = os.fstat(fd).st_size
    if done.returncode != 0 or written != size:
        raise PermanentError(f"{shown!r}: git cat-file wrote {written} of {size} bytes: "
                             f"{done.stderr.decode(errors='replace').strip()[:200]}",
                             reason="ExportFailed")
    return True


def export_tree(path: str | Path, sha: str, dest: Path, *,
                max_file_bytes: int | None = None) -> None:
    """Write the commit's tree under ``dest`` (created, ``0700``); refuses an unsafe tree and
    a file over ``max_file_bytes`` (default ``MAX_BLOB_BYTES``)."""
    limit = MAX_BLOB_BYTES if max_file_bytes is None else max_file_bytes
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
                _write_blob(repo, entry.id, target, 0o700 if executable else 0o600, shown,
                            limit)

    walk(root, dest, "")
