"""Git objects no git client would write: trees with hostile entry names, built raw."""

from __future__ import annotations

import pygit2

from tests.support.repos import AUTHOR, Repo

BLOB = 0o100644
TREE = 0o040000
LINK = 0o120000
Entry = tuple[int, bytes, pygit2.Oid]


def raw_tree(repo: pygit2.Repository, entries: list[Entry]) -> pygit2.Oid:
    """A tree object written straight to the odb: no name checks, duplicates kept."""
    data = b"".join(f"{mode:o} ".encode() + name + b"\0" + oid.raw
                    for mode, name, oid in entries)
    return repo.odb.write(pygit2.enums.ObjectType.TREE, data)


def blob(repo: pygit2.Repository, data: bytes) -> pygit2.Oid:
    return repo.create_blob(data)


def sub(repo: pygit2.Repository, name: bytes, data: bytes = b"pwned\n") -> pygit2.Oid:
    """A one-file tree."""
    return raw_tree(repo, [(BLOB, name, blob(repo, data))])


def entries_of(tree: pygit2.Tree) -> list[Entry]:
    return [(int(e.filemode), e.raw_name or b"", e.id) for e in tree]


def head_tree(repo: Repo) -> pygit2.Tree:
    head = repo.head()
    assert head is not None
    return repo.repo[head].peel(pygit2.Commit).tree


def head_entries(repo: Repo) -> list[Entry]:
    return entries_of(head_tree(repo)) if repo.head() is not None else []


def commit_entries(repo: Repo, extra: list[Entry], message: str = "crafted",
                   base: list[Entry] | None = None) -> str:
    """Commit ``base`` (default: the head's root entries) plus ``extra`` (raw) on the branch."""
    tree = raw_tree(repo.repo, (head_entries(repo) if base is None else base) + extra)
    ref = f"refs/heads/{repo.branch}"
    parents = [repo.repo.references[ref].target] if ref in repo.repo.references else []
    return str(repo.repo.create_commit(ref, AUTHOR, AUTHOR, message, tree, parents))
