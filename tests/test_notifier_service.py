"""The notifier service on a real nats-server: effectively once, updates, failures, digests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.notify.providers.webhook import REDELIVERY_HEADER
from orchestrator.resources import Resources
from orchestrator.runtime import Ack, Delivery, Fail, Retry
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from services.notifier.service import ATTEMPTS, SENDING, Notifier, delivery_key
from tests.support.waits import wait_for_events


class Receiver:
    """A local HTTP server standing in for Slack's Web API and a webhook endpoint."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.redelivery: list[str] = []  # each POST's X-Conveyor-Redelivery ("" if absent)
        self.status = 200
        self.retry_after: str | None = None
        self.changed = asyncio.Condition()
        self.app = web.Application()
        self.app.router.add_post("/api/chat.postMessage", self.slack)
        self.app.router.add_post("/api/chat.update", self.slack)
        self.app.router.add_post("/hook", self.hook)
        self.url = ""

    async def _record(self, path: str, body: dict[str, Any]) -> None:
        self.posts.append((path, body))
        async with self.changed:
            self.changed.notify_all()

    async def slack(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self._record(request.path, body)
        return web.json_response({"ok": True, "channel": "C123", "ts": "1700000000.000100"})

    async def hook(self, request: web.Request) -> web.Response:
        self.redelivery.append(request.headers.get(REDELIVERY_HEADER, ""))
        await self._record(request.path, await request.json())
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return web.Response(status=self.status, text="nope" if self.status >= 400 else "ok",
                            headers=headers)

    async def wait(self, count: int, timeout: float = 10) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.posts) >= count),
                                   timeout)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    runner = web.AppRunner(r.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield r
    await runner.cleanup()


async def configure(bus: EventBus, notifiers: str) -> None:
    text = "environments:\n  dev:\n    path: dev\n" + notifiers
    await bus.publish(new_event(ev.CONFIG_LOADED, env=ev.NO_ENV, correlation="c0",
                                key=text, data={"text": text}))


def outcome(kind: str, sha: str = "a" * 40, env: str = "dev", **data: Any) -> Event:
    return new_event(kind, env=env, correlation=sha, key=kind,
                     data={"revision": sha, "short": sha[:7], "message": "Bump web",
                           "author": "Dev <dev@example.com>", **data})


async def published(bus: EventBus, event: Event) -> Delivery:
    stored = await bus.publish(event)
    return Delivery(event, stored.seq, 1)


@pytest.fixture
async def notifier(bus: EventBus, tmp_path: Path) -> AsyncIterator[Notifier]:
    n = Notifier(Resources.around(bus, Settings(
        nats_url="", data_dir=tmp_path, secrets=SecretPolicy(env_allow=("HOOK_URL", "SLACK_*")))))
    import aiohttp

    n._session = aiohttp.ClientSession()
    yield n
    await n._session.close()


async def test_redelivered_event_is_posted_once(bus: EventBus, receiver: Receiver,
                                                notifier: Notifier,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", f"{receiver.url}/hook")
    await configure(bus, "notifiers:\n  ops:\n    type: webhook\n    url: ${HOOK_URL}\n")
    delivery = await published(bus, outcome(ev.APPLY_SUCCEEDED))
    first = await notifier.handle(delivery)
    # the process died before acking: the same message comes again
    second = await notifier.handle(Delivery(delivery.event, delivery.seq, 2))
    assert isinstance(first, Ack) and isinstance(second, Ack)
    assert [e.type for e in first.emit] == [ev.NOTIFY_SENT]
    assert list(second.emit) == []
    assert len(receiver.posts) == 1
    assert receiver.posts[0][1]["id"] == delivery.event.id


async def test_a_send_cut_short_before_its_record_is_repeated_and_says_so(
        bus: EventBus, receiver: Receiver, notifier: Notifier,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the receiver answered, before the record said so: the bucket holds the
    record written before the request. The redelivery sends again, the same CloudEvent id
    with ``X-Conveyor-Redelivery: 1``, and records it; the next one sends nothing."""
    monkeypatch.setenv("HOOK_URL", f"{receiver.url}/hook")
    await configure(bus, "notifiers:\n  ops:\n    type: webhook\n    url: ${HOOK_URL}\n")
    delivery = await published(bus, outcome(ev.APPLY_SUCCEEDED))
    assert isinstance(await notifier.handle(delivery), Ack)
    key = delivery_key(delivery.event.id, "ops")
    record = await bus.kv_get(subjects.DELIVERY_BUCKET, key)
    assert record is not None and record[0]["state"] == "sent"
    # the state a SIGKILL between the answer and the record leaves behind
    await bus.kv_put(subjects.DELIVERY_BUCKET, key,
                     {"event": delivery.event.id, "route": "ops", "state": SENDING})
    again = await notifier.handle(Delivery(delivery.event, delivery.seq, 2))
    assert isinstance(again, Ack) and [e.type for e in again.emit] == [ev.NOTIFY_SENT]
    assert [body["id"] for _, body in receiver.posts] == [delivery.event.id] * 2
    assert receiver.redelivery == ["", "1"]
    assert list((await notifier.handle(Delivery(delivery.event, delivery.seq, 3))).emit) == []
    assert len(receiver.posts) == 2


async def test_a_failed_send_is_retried_as_a_possible_repeat(
        bus: EventBus, receiver: Receiver, notifier: Notifier,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 may come from a receiver that acted anyway: the retry is flagged too."""
    monkeypatch.setenv("HOOK_URL", f"{receiver.url}/hook")
    await configure(bus, "notifiers:\n  ops:\n    type: webhook\n    url: ${HOOK_URL}\n")
    delivery = await published(bus, outcome(ev.APPLY_SUCCEEDED))
    receiver.status = 503
    assert isinstance(await notifier.handle(delivery), Retry)
    receiver.status = 200
    assert isinstance(await notifier.handle(Delivery(delivery.event, delivery.seq, 2)), Ack)
    assert receiver.redelivery[0] == "" and set(receiver.redelivery[1:]) == {"1"}


async def test_one_deployment_is_one_slack_message_then_updated(
        bus: EventBus, receiver: Receiver, notifier: Notifier,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_TOKEN", "xoxb-test-token")
    await configure(bus, f"notifiers:\n  chat:\n    type: slack\n    token: ${{SLACK_TOKEN}}\n"
                         f"    channel: '#deploys'\n    api: {receiver.url}/api\n"
                         f"    events: [render, apply, health]\n")
    for kind in (ev.RENDER_SUCCEEDED, ev.APPLY_SUCCEEDED, ev.HEALTH_HEALTHY):
        result = await notifier.handle(await published(bus, outcome(kind)))
        assert isinstance(result, Ack) and result.emit[0].type == ev.NOTIFY_SENT
    paths = [p for p, _ in receiver.posts]
    assert paths == ["/api/chat.postMessage", "/api/chat.update", "/api/chat.update"]
    assert receiver.posts[1][1]["ts"] == "1700000000.000100"
    assert receiver.posts[1][1]["channel"] == "C123"
    # another commit is another deployment: a new message
    await notifier.handle(await published(bus, outcome(ev.APPLY_SUCCEEDED, sha="b" * 40)))
    assert receiver.posts[-1][0] == "/api/chat.postMessage"


async def test_failed_send_is_retried_then_notify_failed_with_answer(
        bus: EventBus, receiver: Receiver, notifier: Notifier,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", f"{receiver.url}/hook")
    await configure(bus, "notifiers:\n  ops:\n    type: webhook\n    url: ${HOOK_URL}\n")
    receiver.status = 503
    receiver.retry_after = "7"
    delivery = await published(bus, outcome(ev.APPLY_FAILED, error="boom"))
    result = await notifier.handle(delivery)
    assert isinstance(result, Retry)
    assert result.delay >= 7  # the provider's Retry-After is honoured
    assert await bus.kv_get("conveyor-deliveries", "x") is None
    last = await notifier.handle(Delivery(delivery.event, delivery.seq, ATTEMPTS))
    assert isinstance(last, Fail)
    failed = [e for e in last.emit if e.type == ev.NOTIFY_FAILED]
    assert len(failed) == 1 and "503" in failed[0].data["error"]
    # never recorded as sent: once the receiver recovers, a retry delivers it
    receiver.status = 200
    receiver.retry_after = None
    again = await notifier.handle(Delivery(delivery.event, delivery.seq, 1))
    assert isinstance(again, Ack) and again.emit[0].type == ev.NOTIFY_SENT


async def test_permanent_rejection_is_notify_failed_at_once(
        bus: EventBus, receiver: Receiver, notifier: Notifier,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", f"{receiver.url}/hook")
    await configure(bus, "notifiers:\n  ops:\n    type: webhook\n    url: ${HOOK_URL}\n")
    receiver.status = 404
    result = await notifier.handle(await published(bus, outcome(ev.APPLY_SUCCEEDED)))
    assert isinstance(result, Ack)
    assert [e.type for e in result.emit] == [ev.NOTIFY_FAILED]
    assert "404" in result.emit[0].data["error"]
    assert f"{receiver.url}" not in result.emit[0].to_json().decode()


async def test_burst_is_coalesced_into_a_digest(bus: EventBus, receiver: Receiver,
                                                notifier: Notifier,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", f"{receiver.url}/hook")
    # one message at once, then one per 100 ms: a burst of five becomes 1 + a digest
    await configure(bus, "notifiers:\n  ops:\n    type: webhook\n    url: ${HOOK_URL}\n"
                         "    rateLimit: {perMinute: 600, burst: 1}\n")
    notifier._flusher = asyncio.create_task(notifier._flush_loop())
    try:
        results = [await notifier.handle(await published(
            bus, outcome(ev.APPLY_SUCCEEDED, sha=f"{i:040d}"))) for i in range(5)]
        await receiver.wait(2)
        # the digest's notify.sent is published by the flusher itself
        events = await wait_for_events(bus, lambda evs: any(
            e.type == ev.NOTIFY_SENT for e in evs))
    finally:
        notifier._flusher.cancel()
    assert len(receiver.posts) == 2
    digest = receiver.posts[1][1]
    assert digest["type"] == "conveyor.notify.digest"
    assert digest["data"]["count"] == 4
    assert [len(r.emit) for r in results] == [1, 0, 0, 0, 0]  # four held
    sent = [e for e in events if e.type == ev.NOTIFY_SENT]
    assert len(sent) == 1 and sent[0].data["for"] == "conveyor.notify.digest"


async def test_broken_template_falls_back_and_says_so(
        bus: EventBus, receiver: Receiver, notifier: Notifier,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_TOKEN", "xoxb-test-token")
    await configure(bus, f"notifiers:\n  chat:\n    type: slack\n    token: ${{SLACK_TOKEN}}\n"
                         f"    channel: '#deploys'\n    api: {receiver.url}/api\n"
                         "    template: '{{ env.nope.deeper }}'\n")
    result = await notifier.handle(await published(bus, outcome(ev.APPLY_SUCCEEDED)))
    assert isinstance(result, Ack)
    sent = result.emit[0]
    assert sent.type == ev.NOTIFY_SENT and sent.data["template_error"]
    assert "dev" in str(receiver.posts[0][1])


async def test_a_retried_event_reaches_only_the_routes_that_missed_it(
        bus: EventBus, receiver: Receiver, notifier: Notifier,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", f"{receiver.url}/hook")
    await configure(bus, "notifiers:\n  ops:\n    type: webhook\n    url: ${HOOK_URL}\n")
    original = outcome(ev.APPLY_SUCCEEDED)
    await notifier.handle(await published(bus, original))
    assert len(receiver.posts) == 1
    # `conveyor retry` re-publishes it as a new event that names its original
    retried = new_event(original.type, env="dev", correlation=original.correlationid,
                        key="retry:1", data={**original.data, "original_id": original.id,
                                             "retry_of": "dead-id"})
    result = await notifier.handle(await published(bus, retried))
    assert isinstance(result, Ack) and list(result.emit) == []
    assert len(receiver.posts) == 1
