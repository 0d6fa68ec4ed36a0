"""A notifier SIGKILLed in the one window at-least-once leaves open: after its webhook's
receiver got the POST, before the notifier heard the answer and recorded it.

The receiver kills the ``conveyor run notifier`` process the moment the POST arrives (so the
answer reaches nobody), then the notifier is started again. It must send the same CloudEvent
id once more, say so (``X-Conveyor-Redelivery: 1``, which the first POST did not carry), record
it and send nothing after that. This is the duplicate the crash soak counts as a "same-id
redelivery after a kill of the sender", made on purpose instead of by chance.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from orchestrator import subjects
from orchestrator.adapters.embedded_nats import free_port
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import new_event
from orchestrator.notify.providers.webhook import REDELIVERY_HEADER
from services.notifier.service import delivery_key
from tests.support.crash import NatsProcess, ServiceProcess, conveyor_binary
from tests.support.waits import wait_for_events

pytestmark = pytest.mark.slow


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsProcess]:
    nats = NatsProcess(tmp_path / "nats")
    await nats.start()
    yield nats
    await nats.stop()


async def test_killed_between_the_answer_and_the_record_resends_once_and_says_so(
        server: NatsProcess, tmp_path: Path) -> None:
    arrivals: list[tuple[str, str]] = []  # (id, X-Conveyor-Redelivery)
    arrived = asyncio.Condition()
    notifier: list[ServiceProcess] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        arrivals.append((str(body["id"]), request.headers.get(REDELIVERY_HEADER, "")))
        if len(arrivals) == 1:
            await notifier[0].kill()  # the answer below reaches a dead process
        async with arrived:
            arrived.notify_all()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    bus = await EventBus.connect(server.url, name="test")
    try:
        text = ("environments:\n  dev:\n    path: dev\nnotifiers:\n  hook:\n    type: webhook\n"
                "    url: ${HOOK_URL}\n    events: [\"conveyor.apply.*\"]\n")
        await bus.publish(new_event(ev.CONFIG_LOADED, env=ev.NO_ENV, correlation="c0",
                                    key="config", data={"text": text}))
        notifier.append(ServiceProcess("notifier", [
            conveyor_binary(), "run", "notifier", "--nats", server.url,
            "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}",
            "--env-allow", "HOOK_URL"], tmp_path / "notifier.log",
            env={"HOOK_URL": f"http://127.0.0.1:{port}/hook"}))
        await notifier[0].start()
        applied = new_event(ev.APPLY_SUCCEEDED, env="dev", correlation="a" * 40, key="x",
                            data={"revision": "a" * 40})
        await bus.publish(applied)
        async with arrived:
            await asyncio.wait_for(arrived.wait_for(lambda: len(arrivals) >= 1), 30)
        assert not notifier[0].running
        record = await bus.kv_get(subjects.DELIVERY_BUCKET, delivery_key(applied.id, "hook"))
        assert record is not None and record[0]["state"] == "sending"  # the kill's trace

        await notifier[0].start()
        sent = await wait_for_events(bus, lambda evs: any(
            e.type == ev.NOTIFY_SENT and e.causationid == applied.id for e in evs))
        assert arrivals == [(applied.id, ""), (applied.id, "1")]
        record = await bus.kv_get(subjects.DELIVERY_BUCKET, delivery_key(applied.id, "hook"))
        assert record is not None and record[0]["state"] == "sent"
        assert sum(e.type == ev.NOTIFY_SENT for e in sent) == 1
        # nothing more comes: a third handling finds the record (the process stops cleanly)
        assert await notifier[0].terminate(timeout=20) == 0
        assert len(arrivals) == 2
    finally:
        if notifier and notifier[0].running:
            await notifier[0].kill()
        await bus.close()
        await runner.cleanup()
