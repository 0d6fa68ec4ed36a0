"""One active applier per environment, standbys allowed: a lease in JetStream KV, fenced.

The lease itself against a real nats-server (compare-and-set, takeover after the ttl, release,
loss), the fence on a real git target, and two ``conveyor run applier --env dev`` processes of
which the holder is SIGKILLed: the standby takes over, every commit is applied once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import EmbeddedNats, free_port
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.adapters.nats_lease import Lease
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.errors import FencedError
from orchestrator.ports import ApplyRequest
from orchestrator.targets.git.target import GitTarget
from tests.support.crash import ServiceProcess, conveyor_binary
from tests.support.repos import Repo
from tests.support.waits import wait_for_events
from tests.test_log_reset import trailers
from tests.test_record_before_effect import services
from tests.test_spine import settings_for

TTL = 1.0


async def test_one_holder_a_standby_and_a_takeover_after_the_ttl(bus: EventBus) -> None:
    first = Lease(bus, key="applier.t", holder="first", ttl=TTL)
    second = Lease(bus, key="applier.t", holder="second", ttl=TTL)
    token = await first.acquire()
    waiting = asyncio.create_task(second.acquire())
    # the holder renews every ttl/3: for three ttls the standby must not get in
    done, _ = await asyncio.wait({waiting}, timeout=3 * TTL)
    assert not done and first.token == token
    assert first._renewing is not None
    first._renewing.cancel()  # the holder dies (no release)
    taken = await asyncio.wait_for(waiting, 5 * TTL)
    assert taken > token  # fencing tokens only grow
    # the old holder comes back and tries to renew: it learns it lost the lease
    first._renewing = asyncio.create_task(first._renew())
    await asyncio.wait_for(first.lost.wait(), 3 * TTL)
    assert first.token == 0 and second.token == taken
    await second.release()


async def test_a_released_lease_is_taken_at_once(bus: EventBus) -> None:
    first = Lease(bus, key="applier.r", holder="first", ttl=30.0)
    second = Lease(bus, key="applier.r", holder="second", ttl=30.0)
    await first.acquire()
    waiting = asyncio.create_task(second.acquire())
    await first.release()
    await asyncio.wait_for(waiting, 15.0)  # well inside the 30 s ttl
    assert second.token
    await second.release()


async def test_the_target_refuses_a_stale_holder(repo: Repo) -> None:
    repo.commit({"README.md": "x"}, "initial")
    target = GitTarget(str(repo.path), "deploy/dev")
    objects = [{"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "dev"}, "data": {"n": "1"}}]
    newer = ApplyRequest(env="dev", revision="b" * 40, digest="sha256:b", objects=objects,
                         origin_seq=5, fence=20)
    await target.apply(newer)
    stale = ApplyRequest(env="dev", revision="a" * 40, digest="sha256:a",
                         objects=[{**objects[0], "data": {"n": "0"}}], origin_seq=4, fence=10)
    with pytest.raises(FencedError, match="lease 20"):
        await target.apply(stale)
    assert trailers(repo, "dev")["Lease"] == "20"  # the newer one stands


def applied(sha: str):  # type: ignore[no-untyped-def]
    def check(events: list[Event]) -> bool:
        return any(e.type in (ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED) and e.correlationid == sha
                   and e.subject == "dev" for e in events)
    return check


async def test_the_standby_applier_takes_over_when_the_holder_is_killed(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    settings = settings_for(repo, nats_server, tmp_path / "data")
    appliers = [ServiceProcess(f"applier-{i}", [
        conveyor_binary(), "run", "applier", "--env", "dev", "--nats", nats_server.url,
        "--repo", str(repo.path),
        "--data-dir", str(tmp_path / f"applier-{i}"), "--listen", f"127.0.0.1:{free_port()}",
        "--lease-ttl", "2",
    ], tmp_path / f"applier-{i}.log") for i in range(2)]
    try:
        for applier in appliers:
            await applier.start()
        first = repo.commit(demo_files(), "initial")
        async with services(settings, "api", "renderer", "git-watcher") as upstream:
            await wait_for_events(bus, applied(first), timeout=60)
            holder = next(a for a in appliers if "lease.acquired" in a.log_path.read_text())
            standby = next(a for a in appliers if a is not holder)
            assert "lease.acquired" not in standby.log_path.read_text()
            await holder.kill()

            second = repo.commit(demo_files(tag="1.29"), "after the holder died")
            await upstream.service("git-watcher").poll()  # type: ignore[attr-defined]
            events = await wait_for_events(bus, applied(second), timeout=60)
        assert "lease.taken_over" in standby.log_path.read_text()
        outcomes = [(e.correlationid, e.type) for e in events if e.subject == "dev"
                    and e.type in (ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_SUPERSEDED)]
        assert outcomes == [(first, ev.APPLY_SUCCEEDED), (second, ev.APPLY_SUCCEEDED)]
        log = repo.log("deploy/dev")
        assert len(log) == 2 and second in log[0] and first in log[1]  # order kept, none twice
        tokens = [int(line.split(": ")[1]) for m in log for line in m.splitlines()
                  if line.startswith("Conveyor-Lease: ")]
        assert len(tokens) == 2 and tokens[0] > tokens[1]  # written under the newer lease
    finally:
        for applier in appliers:
            with contextlib.suppress(Exception):
                await applier.terminate(timeout=15)
