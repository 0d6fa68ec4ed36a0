"""Two Conveyors in one process share nothing, and both stop leaving no task behind.

Each runs all five services on its own repository (served by ``git daemon``, so each keeps a
mirror), its own data dir and its own embedded nats-server. What each owns is built by its
``Resources`` (``orchestrator/resources.py``): the test checks the objects are distinct, that
a commit to one repository reaches only that instance's log, targets and metrics, and that
stopping both (concurrently) leaves no asyncio task pending.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pygit2

from conveyor.app import Conveyor
from conveyor.demo import demo_files
from orchestrator.adapters import git_callbacks
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from tests.support.gitservers import GitDaemon, Upstream
from tests.support.waits import wait_for_events


def applied(sha: str) -> object:
    def check(events: list[Event]) -> bool:
        return {e.subject for e in events
                if e.correlationid == sha and e.type == ev.APPLY_SUCCEEDED} >= {"dev", "prod"}
    return check


def resources(conveyor: Conveyor) -> Resources:
    assert conveyor.resources is not None
    return conveyor.resources


def detected_count(res: Resources) -> float:
    value = res.metrics.registry.get_sample_value(
        "conveyor_events_total", {"type": ev.COMMIT_DETECTED, "outcome": "detected"})
    return value or 0.0


def branch_head(bare: Path, branch: str) -> str | None:
    ref = pygit2.Repository(str(bare)).references.get(f"refs/heads/{branch}")
    return str(ref.target) if ref is not None else None


async def test_two_conveyors_in_one_process_share_nothing(tmp_path: Path) -> None:
    root = tmp_path / "git"
    root.mkdir()
    up_a, up_b = Upstream(root, "a"), Upstream(root, "b")
    first_a = up_a.push(demo_files(), "a: initial")
    first_b = up_b.push(demo_files(tag="1.26"), "b: initial")
    async with GitDaemon(root, receive_pack=True) as daemon:
        a = Conveyor(Settings(nats_url="", data_dir=tmp_path / "data-a", repo=daemon.url(up_a.name),
                              branch="main", listen="127.0.0.1:0", interval=3600.0))
        b = Conveyor(Settings(nats_url="", data_dir=tmp_path / "data-b", repo=daemon.url(up_b.name),
                              branch="main", listen="127.0.0.1:0", interval=3600.0))
        pygit2.settings.server_timeout = 0  # libgit2's default: no read timeout
        await asyncio.gather(a.start(), b.start())
        try:
            ra, rb = resources(a), resources(b)
            # what stays process-wide by libgit2's design is set by the composition root, the
            # same for both: its timeouts (docs/architecture.md)
            assert pygit2.settings.server_timeout == int(git_callbacks.TIMEOUT * 1000)
            assert pygit2.settings.server_connect_timeout == int(
                git_callbacks.CONNECT_TIMEOUT * 1000)
            # every resource is its own
            assert ra.embedded is not None and rb.embedded is not None
            assert ra.embedded is not rb.embedded and ra.settings.nats_url != rb.settings.nats_url
            for name in ("bus", "metrics", "mirrors", "kube", "git_locks", "background"):
                assert getattr(ra, name) is not getattr(rb, name), name
            assert ra.metrics.registry is not rb.metrics.registry
            await wait_for_events(ra.bus, applied(first_a))
            await wait_for_events(rb.bus, applied(first_b))
            # each mirror pool holds its own repository, under its own data dir
            paths_a = {c.path for c in ra.mirrors._checkouts.values()}
            paths_b = {c.path for c in rb.mirrors._checkouts.values()}
            assert paths_a and paths_b and not paths_a & paths_b
            assert all(p.startswith(str(tmp_path / "data-a")) for p in paths_a)
            assert all(p.startswith(str(tmp_path / "data-b")) for p in paths_b)

            b_detected = detected_count(rb)
            second_a = up_a.push(demo_files(tag="1.28", dev_replicas=3), "a: bump")
            watcher = a.service("git-watcher")
            assert isinstance(watcher, GitWatcher)
            await watcher.poll()
            a_events = await wait_for_events(ra.bus, applied(second_a))
            b_events = await wait_for_events(rb.bus, applied(first_b))
            # the commit is in A's log, targets and metrics, and nowhere in B's
            assert any(e.correlationid == second_a for e in a_events)
            assert not any(e.correlationid in (first_a, second_a) for e in b_events)
            assert not any(e.correlationid == first_b for e in a_events)
            assert detected_count(ra) >= 4   # two commits, two environments each
            assert detected_count(rb) == b_detected
            for env in ("dev", "prod"):
                head_a = branch_head(up_a.bare, f"deploy/{env}")
                head_b = branch_head(up_b.bare, f"deploy/{env}")
                assert head_a is not None and head_b is not None
                assert second_a in pygit2.Repository(str(up_a.bare))[head_a].message
                assert first_b in pygit2.Repository(str(up_b.bare))[head_b].message
            assert not ra.kube.clients and not rb.kube.clients  # no kubernetes target here
        finally:
            await asyncio.gather(a.stop(), b.stop())
        assert ra.bus.nc.is_closed and rb.bus.nc.is_closed
        assert len(ra.background) == 0 and len(rb.background) == 0
    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    assert pending == [], [t.get_name() + ": " + repr(t.get_coro()) for t in pending]
