"""Crafted trees cannot write outside the snapshot (finding 2 of the review).

Tree entry names are bytes inside Git objects: an absolute name, ``../../x``, a ``..``
directory, ``.git`` and its case/NTFS/HFS aliases, or a symlink followed by a directory of the
same name used to write anywhere. Now every entry is checked (what ``git fsck`` rejects) before a
commit is announced (``commit.rejected`` naming the path) and again before a snapshot is
written; the export never writes through an existing path or a link; snapshots are 0700.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pygit2
import pytest

from orchestrator.adapters import git_tree
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.treepaths import entry_problem
from tests.security.crafted import (
    BLOB,
    LINK,
    TREE,
    Entry,
    blob,
    commit_entries,
    entries_of,
    head_tree,
    raw_tree,
    sub,
)
from tests.security.pipeline import finished, good_files, next_good_commit_deploys, of, poll
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events


@pytest.mark.parametrize("name", [
    b"", b".", b"..", b"a/b", b"/etc", b"a\0b", b".git", b".GIT", b".Git", b"git~1", b"GIT~1",
    b".git ", b".git.", b".git. . ", b".git::$INDEX_ALLOCATION", ".g\u200cit".encode(),
    "\ufeff.git".encode(),
])
def test_names_git_fsck_rejects(name: bytes) -> None:
    assert entry_problem(name) is not None


@pytest.mark.parametrize("name", [b"ok.yaml", b".gitignore", b".github", b"git~2", b"...",
                                  b"..a", b"a..", "caf\u00e9".encode()])
def test_ordinary_names_pass(name: bytes) -> None:
    assert entry_problem(name) is None


Attack = Callable[[pygit2.Repository, Path], list[Entry]]


def absolute(r: pygit2.Repository, outside: Path) -> list[Entry]:
    return [(BLOB, str(outside / "abs").encode(), blob(r, b"pwned\n"))]


def dotdot_name(r: pygit2.Repository, outside: Path) -> list[Entry]:
    return [(BLOB, f"../../../{outside.name}/x".encode(), blob(r, b"pwned\n"))]


def dotdot_dir(r: pygit2.Repository, outside: Path) -> list[Entry]:
    return [(TREE, b"..", raw_tree(r, [(TREE, b"..", sub(r, b"x"))]))]


def dotgit(r: pygit2.Repository, outside: Path) -> list[Entry]:
    hooks = raw_tree(r, [(BLOB, b"post-checkout", blob(r, b"#!/bin/sh\ntouch /tmp/x\n"))])
    return [(TREE, b"lib", raw_tree(r, [(TREE, b".GIT", raw_tree(r, [(TREE, b"hooks", hooks)]))]))]


def ntfs_alias(r: pygit2.Repository, outside: Path) -> list[Entry]:
    return [(TREE, b"git~1", sub(r, b"config"))]


def symlink_then_duplicate(r: pygit2.Repository, outside: Path) -> list[Entry]:
    return [(LINK, b"zlink", blob(r, str(outside).encode())),
            (TREE, b"zlink", sub(r, b"x"))]


def duplicate_file(r: pygit2.Repository, outside: Path) -> list[Entry]:
    return [(BLOB, b"zz", blob(r, b"a")), (BLOB, b"zz", blob(r, b"b"))]


ATTACKS: dict[str, tuple[Attack, str]] = {
    "absolute": (absolute, "a '/' in the name"),
    "dotdot-name": (dotdot_name, "a '/' in the name"),
    "dotdot-dir": (dotdot_dir, "'..': the name '..'"),
    "dotgit": (dotgit, "'lib/.GIT': the name '.GIT' (an alias of .git)"),
    "ntfs-alias": (ntfs_alias, "'git~1': the name 'git~1' (an alias of .git)"),
    "symlink-duplicate": (symlink_then_duplicate, "'zlink': a duplicate entry"),
    "duplicate-file": (duplicate_file, "'zz': a duplicate entry"),
}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside"
    target.mkdir()
    return target


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_export_refuses_crafted_trees_and_writes_nothing(repo: Repo, outside: Path,
                                                         tmp_path: Path, attack: str) -> None:
    build, reason = ATTACKS[attack]
    repo.commit(good_files(), "initial")
    sha = commit_entries(repo, build(repo.repo, outside))
    assert git_tree.unsafe_entry(repo.path, sha) is not None
    dest = tmp_path / "snapshots" / sha
    with pytest.raises(git_tree.UnsafeTreeError) as info:
        git_tree.export_tree(repo.path, sha, dest)
    assert reason in str(info.value)
    assert list(outside.iterdir()) == []
    assert not dest.exists()  # refused before anything was written


def test_a_good_snapshot_is_private_and_keeps_links_as_links(repo: Repo, outside: Path,
                                                             tmp_path: Path) -> None:
    repo.commit(good_files(), "initial")
    sha = commit_entries(repo, [(LINK, b"link", blob(repo.repo, str(outside).encode()))])
    dest = tmp_path / "snap"
    old = os.umask(0o022)
    try:
        git_tree.export_tree(repo.path, sha, dest)
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "app").stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "app" / "cm.yaml").stat().st_mode) == 0o600
    assert (dest / "link").is_symlink() and os.readlink(dest / "link") == str(outside)


def test_oversized_blob_is_refused_before_it_is_loaded(repo: Repo, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git_tree, "MAX_BLOB_BYTES", 1024)
    repo.commit(good_files(), "initial")
    sha = commit_entries(repo, [(BLOB, b"big.bin", blob(repo.repo, b"x" * 4096))])
    with pytest.raises(git_tree.UnsafeTreeError, match=r"'big\.bin': 4096 bytes, over the"):
        git_tree.export_tree(repo.path, sha, tmp_path / "snap")


def test_large_blob_is_written_whole_in_chunks(repo: Repo, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git_tree, "CHUNK", 1000)
    data = os.urandom(10_500)
    repo.commit({**good_files(), "data.bin": data}, "initial")
    head = repo.head()
    assert head is not None
    git_tree.export_tree(repo.path, head, tmp_path / "snap")
    assert (tmp_path / "snap" / "data.bin").read_bytes() == data


async def test_crafted_commit_is_rejected_naming_the_path(repo: Repo, nats_server: EmbeddedNats,
                                                          bus: EventBus, outside: Path,
                                                          tmp_path: Path) -> None:
    first = repo.commit(good_files("v1"), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        # app/.. /.. /outside/x: a '..' directory inside the environment's own directory
        head = head_tree(repo)
        app = repo.repo[head["app"].id].peel(pygit2.Tree)
        climb = raw_tree(repo.repo, [(TREE, b"..", sub(repo.repo, outside.name.encode()))])
        evil_app = raw_tree(repo.repo, [*entries_of(app), (TREE, b"..", climb)])
        others = [e for e in entries_of(head) if e[1] != b"app"]
        attack = commit_entries(repo, [(TREE, b"app", evil_app)], base=others)
        await poll(conveyor)
        events = await wait_for_events(bus, finished(attack, {"app"}))
        assert of(events, attack, "app") == [ev.COMMIT_REJECTED]
        rejected = next(e for e in events if e.type == ev.COMMIT_REJECTED)
        assert rejected.data["reason"] == "UnsafeTree"
        assert "'app/..'" in rejected.data["error"]
        assert list(outside.iterdir()) == []
        await next_good_commit_deploys(conveyor, bus, repo)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("streamed", [True, False])
def test_a_big_blob_is_streamed_by_git_or_read_in_chunks(repo: Repo, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         streamed: bool) -> None:
    """From STREAM_ABOVE up, ``git cat-file`` writes the blob into the opened file (libgit2
    would load it whole); without git it is read through libgit2. Both give the same bytes."""
    import shutil

    monkeypatch.setattr(git_tree, "STREAM_ABOVE", 1000)
    if not streamed:
        monkeypatch.setattr(git_tree.shutil, "which", lambda _name: None)
    elif shutil.which("git") is None:
        pytest.skip("git is not installed")
    data = os.urandom(100_000)
    repo.commit({**good_files(), "data.bin": data}, "initial")
    head = repo.head()
    assert head is not None
    git_tree.export_tree(repo.path, head, tmp_path / "snap")
    out = tmp_path / "snap" / "data.bin"
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


async def test_a_file_over_the_operators_limit_fails_the_render_naming_it(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    from dataclasses import replace as with_

    from orchestrator.rendering.model import RenderTools

    first = repo.commit(good_files("v1"), "initial")
    settings = with_(settings_for(repo, nats_server, tmp_path / "data"),
                     render_tools=RenderTools(max_file_bytes=4096))
    async with running(settings) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        big = repo.commit({**good_files("v2"), "app/huge.json": "[" + "0," * 3000 + "0]"},
                          "a file over the limit")
        await poll(conveyor)
        events = await wait_for_events(bus, finished(big, {"app"}))
        assert of(events, big, "app")[-1] == ev.RENDER_FAILED
        failed = next(e for e in events if e.type == ev.RENDER_FAILED
                      and e.correlationid == big)
        assert failed.data["reason"] == "FileTooLarge"
        error = " ".join(failed.data["errors"])
        assert "'app/huge.json': 6003 bytes, over the 4096-byte limit" in error
        assert "--max-file-bytes" in error
        repo.commit({"app/huge.json": None}, "without it")  # gone: the next one deploys
        await next_good_commit_deploys(conveyor, bus, repo)
