"""A real git repository made with pygit2 (no git CLI): the demo commits with it, tests reuse it."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import pygit2

AUTHOR = pygit2.Signature("Dev Eloper", "dev@example.com")


class Repo:
    """A non-bare repository with a helper to commit file changes on a branch."""

    def __init__(self, path: Path, branch: str = "main") -> None:
        self.path = path
        self.branch = branch
        if (path / ".git").exists():
            self.repo = pygit2.Repository(str(path))
        else:
            path.mkdir(parents=True, exist_ok=True)
            self.repo = pygit2.init_repository(str(path), initial_head=branch)

    def commit(self, files: Mapping[str, str | bytes | None], message: str = "change") -> str:
        """Write (or with None delete) files in the work tree and commit them all on the branch."""
        for name, content in files.items():
            target = self.path / name
            if content is None:
                target.unlink(missing_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        index = self.repo.index
        index.add_all()
        for name, content in files.items():
            if content is None:
                with contextlib.suppress(OSError, pygit2.GitError):
                    index.remove(name)
        index.write()
        tree = index.write_tree()
        ref = f"refs/heads/{self.branch}"
        parents = [self.repo.references[ref].target] if ref in self.repo.references else []
        oid = self.repo.create_commit(ref, AUTHOR, AUTHOR, message, tree, parents)
        return str(oid)

    def head(self, branch: str | None = None) -> str | None:
        ref = self.repo.references.get(f"refs/heads/{branch or self.branch}")
        return str(ref.target) if ref is not None else None

    def read(self, branch: str, path: str) -> str | None:
        ref = self.repo.references.get(f"refs/heads/{branch}")
        if ref is None:
            return None
        tree = self.repo[ref.target].peel(pygit2.Commit).tree
        try:
            blob = self.repo[tree[path].id]
            assert isinstance(blob, pygit2.Blob)
            return bytes(blob.data).decode()
        except KeyError:
            return None

    def files(self, branch: str) -> list[str]:
        ref = self.repo.references.get(f"refs/heads/{branch}")
        if ref is None:
            return []
        tree = self.repo[ref.target].peel(pygit2.Commit).tree
        out: list[str] = []

        def walk(t: pygit2.Tree, prefix: str) -> None:
            for e in t:
                if e.filemode == pygit2.enums.FileMode.TREE:
                    sub = self.repo[e.id]
                    assert isinstance(sub, pygit2.Tree)
                    walk(sub, f"{prefix}{e.name}/")
                else:
                    out.append(f"{prefix}{e.name}")

        walk(tree, "")
        return sorted(out)

    def log(self, branch: str) -> list[str]:
        """Commit messages on a branch, newest first."""
        ref = self.repo.references.get(f"refs/heads/{branch}")
        if ref is None:
            return []
        return [c.message for c in self.repo.walk(ref.target)]
