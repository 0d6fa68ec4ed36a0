"""A watcher that died between publishing its events and writing its cursor announces nothing
twice, even when it stayed down longer than JetStream's duplicate window.

Inside the window the server drops a re-announced commit by its ``Nats-Msg-Id``; beyond it
(30 minutes in production, one second here) only the watcher can tell. The crash is made by
hand: the events of a burst are in the log, the cursor is put back to where it was before the
burst (its write was lost), and for the half-way case the burst's last event is deleted (the
process died before publishing it).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from conveyor.app import Conveyor
from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.settings import Settings
from services.git_watcher.cursor import cursor_key
from services.git_watcher.service import GitWatcher
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

CONFIG = "environments:\n  app:\n    path: app\n"
WINDOW = 1.0  # seconds the server remembers a message id (the stream's duplicate_window)


def cm(i: int) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  i: \"{i}\"\n"


@asynccontextmanager
async def watcher(settings: Settings) -> AsyncIterator[GitWatcher]:
    conveyor = Conveyor(settings, names=("git-watcher",))
    await conveyor.start()
    try:
        service = conveyor.service("git-watcher")
        assert isinstance(service, GitWatcher)
        yield service
    finally:
        await conveyor.stop()


async def logged(bus: EventBus) -> list[Event]:
    """The whole log as it is now (the polls above have returned: nothing more is coming)."""
    return [stored.event async for stored in bus.read()]


def detected(events: list[Event]) -> list[str]:
    return [e.correlationid for e in events if e.type == ev.COMMIT_DETECTED]


async def forgotten(bus: EventBus) -> None:
    """Until the server no longer remembers ids published before now (the window passed)."""
    probe = new_event("conveyor.test.probe", env=ev.NO_ENV, key=secrets.token_hex(8), data={})
    await bus.publish(probe)
    async with asyncio.timeout(30):
        while (await bus.publish(probe)).duplicate:
            await asyncio.sleep(WINDOW / 5)


async def test_a_crash_between_events_and_cursor_announces_nothing_twice_after_the_window(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    info = await bus.js.stream_info(subjects.STREAM)
    await bus.js.update_stream(replace(info.config, duplicate_window=WINDOW))
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                        repo=str(repo.path), branch="main", interval=3600.0)
    first = repo.commit({"conveyor.yaml": CONFIG, "app/cm.yaml": cm(0)}, "initial")
    async with watcher(settings) as w:
        await w.poll()
        await wait_for_events(bus, lambda evs: detected(evs) == [first])
    before = await bus.kv_get(subjects.STATE_BUCKET, cursor_key("default"))
    assert before is not None

    burst = [repo.commit({"app/cm.yaml": cm(i)}, f"change {i}") for i in range(1, 4)]
    async with watcher(settings) as w:
        await w.poll()
        await wait_for_events(bus, lambda evs: detected(evs) == [first, *burst])
    # the crash: the cursor write after the burst was lost ...
    await bus.kv_put(subjects.STATE_BUCKET, cursor_key("default"), before[0])
    await forgotten(bus)  # ... and the watcher stayed down longer than the window
    async with watcher(settings) as w:
        await w.poll()
        cursor = await bus.kv_get(subjects.STATE_BUCKET, cursor_key("default"))
        assert cursor is not None and cursor[0]["head"] == burst[-1]
    assert detected(await logged(bus)) == [first, *burst]

    # half-way: the process died after announcing two of three commits
    again = [repo.commit({"app/cm.yaml": cm(i)}, f"change {i}") for i in range(4, 7)]
    before = await bus.kv_get(subjects.STATE_BUCKET, cursor_key("default"))
    assert before is not None
    async with watcher(settings) as w:
        await w.poll()
    assert detected(await logged(bus)) == [first, *burst, *again]
    last = await bus.last_event("app", ev.COMMIT_DETECTED)
    assert last is not None and last.event.correlationid == again[-1]
    await bus.js.delete_msg(subjects.STREAM, last.seq)
    await bus.kv_put(subjects.STATE_BUCKET, cursor_key("default"), before[0])
    await forgotten(bus)
    async with watcher(settings) as w:
        await w.poll()
    assert detected(await logged(bus)) == [first, *burst, *again]
