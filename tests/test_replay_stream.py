"""``conveyor replay`` is exact on a running system, and after a projector killed mid-event.

- 100 replays through the api while commits keep flowing through every service: each one
  compares the live projection with the log's fold at the same position, and none differs.
- A projector that dies between one event's record writes and its ``position`` write (its
  connection gone, the event never acked: what a SIGKILL leaves) is restarted; before the
  event is redelivered, replay agrees, and once it is redelivered it is only acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from benchmarks.replay import synthesise
from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.commands.replay import ReplayError, replay
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.projector import (
    COMMIT_PREFIX,
    POSITION_KEY,
    Projector,
    dump_bucket,
    record_seq,
)
from orchestrator.runtime import Delivery
from services.api.app import ApiService
from services.git_watcher.service import GitWatcher
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

ENVS = ("dev", "prod")
TOKEN = "stream-token"
REPLAYS = 100
CONFIG = "environments:\n" + "".join(
    f"  {e}:\n    path: envs/{e}\n    target:\n      git:\n        branch: deploy/{e}\n"
    for e in ENVS)


def configmap(env: str, n: int) -> str:
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: {env}\n"
            f"data:\n  version: \"{n}\"\n")


async def test_replay_during_a_steady_commit_stream_never_differs(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API_TOKEN", TOKEN)
    first = repo.commit({"conveyor.yaml": CONFIG,
                         **{f"envs/{e}/cm.yaml": configmap(e, 0) for e in ENVS}}, "initial")
    settings = settings_for(repo, nats_server, tmp_path / "data", api_token=TOKEN)
    async with running(settings) as conveyor:
        watcher = conveyor.service("git-watcher")
        api = conveyor.service("api")
        assert isinstance(watcher, GitWatcher) and isinstance(api, ApiService)
        await watcher.poll()
        await wait_for_events(bus, lambda evs: {e.subject for e in evs if e.correlationid == first
                                                and e.type == ev.APPLY_SUCCEEDED} == set(ENVS))
        stop = asyncio.Event()
        commits = 0

        async def commit_stream() -> None:  # one commit every ~100 ms, each polled at once
            nonlocal commits
            rng = random.Random(16)
            while not stop.is_set():
                commits += 1
                touched = rng.sample(ENVS, rng.randint(1, 2))
                repo.commit({f"envs/{e}/cm.yaml": configmap(e, commits) for e in touched},
                            f"change {commits}")
                watcher.trigger()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rng.uniform(0.05, 0.15))

        stream = asyncio.create_task(commit_stream())
        reports: list[dict[str, Any]] = []
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                # replay is quick: go on until the stream has made enough commits too
                while len(reports) < REPLAYS or commits < 20:
                    assert len(reports) < 20 * REPLAYS, f"only {commits} commits made"
                    async with http.post(f"{api.url}/api/v1/replay") as resp:
                        assert resp.status == 200, await resp.text()
                        report = await resp.json()
                    assert report["equal"], [d["description"] for d in report["differences"]]
                    reports.append(report)
        finally:
            stop.set()
            await stream
        # the replays really ran against a moving log: many positions, commits all along
        positions = [r["seq"] for r in reports]
        assert positions == sorted(positions)
        assert len(set(positions)) >= REPLAYS // 4, positions


class Killed(Exception):
    """Raised inside the projector at the point where the test kills it."""


class DyingProjector(Projector):
    """The real projector, which stops for good just before one write of event ``seq``:
    the test then closes its connection, as a SIGKILL would (nothing acked, nothing more
    written)."""

    def __init__(self, bus: EventBus, *, seq: int, before: str) -> None:
        super().__init__(bus)
        self.kill_seq = seq
        self.before = before
        self.current = 0
        self.reached = asyncio.Event()
        self.never = asyncio.Event()

    async def _fold(self, delivery: Delivery) -> None:
        self.current = delivery.seq
        await super()._fold(delivery)

    async def _put(self, key: str, value: Any) -> None:
        if self.current == self.kill_seq and key.startswith(self.before):
            self.reached.set()
            await self.never.wait()  # dies here: the connection is closed under it
        await super()._put(key, value)


@pytest.mark.parametrize("before", [POSITION_KEY, COMMIT_PREFIX],
                         ids=["between-records-and-position", "between-two-records"])
async def test_projector_killed_mid_event_then_replay_agrees(
        nats_server: EmbeddedNats, bus: EventBus, before: str) -> None:
    events = synthesise(300, 4, seed=16)
    for e in events:
        await bus.publish(e)
    # the event cut short: a detected commit (it writes history, the commit, the state)
    cut = max(i for i, e in enumerate(events, start=1) if e.type == ev.COMMIT_DETECTED
              and i < len(events) - 5)
    victim_bus = await EventBus.connect(nats_server.url, name="projector-that-dies")
    victim = DyingProjector(victim_bus, seq=cut, before=before)
    await victim.start()
    await asyncio.wait_for(victim.reached.wait(), 60)
    await victim_bus.nc.close()  # SIGKILL: no ack, no nak, no further write
    assert victim._consumer is not None
    with contextlib.suppress(Exception):  # its tasks end at once (its naks cannot be sent)
        await victim._consumer.stop(grace=0.0)

    # what the kill left: a record of event ``cut`` stored, position still before it
    left = await dump_bucket(bus, subjects.STATE_BUCKET)
    assert left[POSITION_KEY] == {"seq": cut - 1}
    assert max(record_seq(v) for k, v in left.items() if k != POSITION_KEY) == cut

    # straight to NATS while no projector runs: replay says what it sees, not differences
    with pytest.raises(ReplayError, match=f"record at sequence {cut}, past its position"):
        await replay(bus)

    restarted = Projector(bus)
    await restarted.start()
    try:
        # the api serves once start() returns: replay at once, before any redelivery
        report = await replay(bus, lock=restarted.folding)
        assert report.seq >= cut
        assert report.equal, [d.describe() for d in report.differences]
        assert (await replay(bus)).equal
        # the redelivered event is only acked, and the lane goes on to the end of the log
        after = await bus.publish(Event.from_dict({**events[0].to_dict(), "id": "after-kill"}))
        async with restarted.changed:
            await asyncio.wait_for(restarted.changed.wait_for(
                lambda: restarted.position >= after.seq), 60)
        report = await replay(bus, lock=restarted.folding)
        assert report.seq == after.seq
        assert report.equal, [d.describe() for d in report.differences]
    finally:
        await restarted.stop()
