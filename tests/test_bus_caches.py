"""The event bus keeps what it read or wrote when that cannot go stale: the newest event of a
subject (until a newer one is there) and bundles (content-addressed), against a real server."""

from __future__ import annotations

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import digest_of, encode_bundle
from orchestrator.domain.events import new_event


async def test_last_event_sees_a_newer_event_at_once(bus: EventBus) -> None:
    first = new_event(ev.CONFIG_LOADED, env=ev.NO_ENV, source="test", key="a",
                      data={"text": "a"})
    await bus.publish(first)
    assert (found := await bus.last_event(ev.NO_ENV, ev.CONFIG_LOADED)) is not None
    assert found.event.id == first.id
    again = await bus.last_event(ev.NO_ENV, ev.CONFIG_LOADED)
    assert again is not None and again.seq == found.seq and again.event == first
    second = new_event(ev.CONFIG_LOADED, env=ev.NO_ENV, source="test", key="b",
                       data={"text": "b"})
    await bus.publish(second)
    newest = await bus.last_event(ev.NO_ENV, ev.CONFIG_LOADED)
    assert newest is not None and newest.event.id == second.id and newest.seq > found.seq


async def test_a_bundle_reads_back_the_same_here_and_from_another_connection(
        bus: EventBus, nats_server: EmbeddedNats) -> None:
    payload = encode_bundle([{"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "a", "namespace": "x"}}])
    digest = digest_of(payload)
    assert await bus.get_bundle(digest) is None
    await bus.put_bundle(digest, payload)
    assert await bus.get_bundle(digest) == payload
    other = await EventBus.connect(nats_server.url, name="other")
    try:  # nothing in its memory: from the object store
        assert await other.get_bundle(digest) == payload
        assert await other.has_bundle(digest)
    finally:
        await other.close()
