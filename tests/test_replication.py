"""Replication is configuration: the stream, every bucket and the object store, reconciled.

Against a real three-server JetStream cluster on loopback (``tests/support/cluster.py``): the
configs the servers report, not the ones we meant to send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.adapters.nats_schema import EPOCH_KEY, Retention, kv_stream, obj_stream
from orchestrator.errors import PermanentError
from tests.support.cluster import NatsCluster

STREAMS = (subjects.STREAM, kv_stream(subjects.STATE_BUCKET),
           kv_stream(subjects.DELIVERY_BUCKET), obj_stream(subjects.BUNDLE_BUCKET))


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    c = NatsCluster(tmp_path / "cluster")
    try:
        await c.start()
        yield c
    finally:
        await c.stop()


async def configs(bus: EventBus) -> dict[str, StreamConfig]:
    return {name: (await bus.js.stream_info(name)).config for name in STREAMS}


async def replicas(bus: EventBus) -> dict[str, int | None]:
    return {name: config.num_replicas for name, config in (await configs(bus)).items()}


async def test_r3_creates_every_resource_with_three_replicas(cluster: NatsCluster) -> None:
    bus = await EventBus.connect(cluster.urls.split(",")[0], replicas=3)
    try:
        assert await replicas(bus) == dict.fromkeys(STREAMS, 3)
        info = await bus.js.stream_info(subjects.STREAM)
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        assert (info.config.metadata or {}).get(EPOCH_KEY) == bus.epoch != ""
        # the buckets work through the handles bound to the existing streams
        await bus.kv_put(subjects.STATE_BUCKET, "probe", {"ok": True})
        assert await bus.kv_get(subjects.STATE_BUCKET, "probe") == ({"ok": True}, 1)
        await bus.put_bundle("sha256:ab", b"bundle")
        assert await bus.get_bundle("sha256:ab") == b"bundle"
    finally:
        await bus.close()


async def test_retention_restart_keeps_replicas_and_epoch(cluster: NatsCluster) -> None:
    first = await EventBus.connect(cluster.nodes[0].url, replicas=3)
    epoch = first.epoch
    await first.close()
    # e.g. `conveyor run renderer --retention-age 7d` without --replicas
    second = await EventBus.connect(cluster.nodes[1].url, retention=Retention(7 * 86400.0, -1))
    try:
        got = await configs(second)
        assert {n: c.num_replicas for n, c in got.items()} == dict.fromkeys(STREAMS, 3)
        assert got[subjects.STREAM].max_age == 7 * 86400.0
        assert second.epoch == epoch
    finally:
        await second.close()


async def test_replicas_change_in_place_down_and_up(cluster: NatsCluster) -> None:
    bus = await EventBus.connect(cluster.nodes[0].url, replicas=3)
    await bus.kv_put(subjects.STATE_BUCKET, "kept", {"n": 1})
    epoch = bus.epoch
    await bus.close()
    down = await EventBus.connect(cluster.nodes[2].url, replicas=1)
    try:
        assert await replicas(down) == dict.fromkeys(STREAMS, 1)
        assert await down.kv_get(subjects.STATE_BUCKET, "kept") == ({"n": 1}, 1)  # not re-created
        assert down.epoch == epoch
    finally:
        await down.close()
    up = await EventBus.connect(cluster.nodes[1].url, replicas=2)
    try:
        assert await replicas(up) == dict.fromkeys(STREAMS, 2)
    finally:
        await up.close()


async def test_replicas_raised_by_hand_are_kept_and_other_fields_untouched(
        cluster: NatsCluster) -> None:
    bus = await EventBus.connect(cluster.nodes[0].url)  # default: one replica
    assert await replicas(bus) == dict.fromkeys(STREAMS, 1)
    for config in (await configs(bus)).values():  # what an operator does with `nats`
        await bus.js.update_stream(replace(config, num_replicas=3, description="by hand"))
    await bus.close()
    # a start without --replicas used to crash-loop here (create_key_value: err 10058)
    again = await EventBus.connect(cluster.nodes[1].url, retention=Retention(3600.0, -1))
    try:
        got = await configs(again)
        assert {n: c.num_replicas for n, c in got.items()} == dict.fromkeys(STREAMS, 3)
        assert {n: c.description for n, c in got.items()} == dict.fromkeys(STREAMS, "by hand")
    finally:
        await again.close()


async def test_more_replicas_than_servers_is_a_clear_error(cluster: NatsCluster) -> None:
    bus = await EventBus.connect(cluster.nodes[0].url, replicas=3)
    await bus.close()
    with pytest.raises(PermanentError) as caught:
        await EventBus.connect(cluster.nodes[0].url, replicas=5)
    message = str(caught.value)
    assert subjects.STREAM in message and "num_replicas is 3, asked for 5" in message


async def test_replicas_on_a_single_server_name_resource_and_values(
        nats_server: EmbeddedNats) -> None:
    with pytest.raises(PermanentError) as caught:
        await EventBus.connect(nats_server.url, replicas=3)
    message = str(caught.value)
    assert subjects.STREAM in message and "3 replica" in message


async def test_a_stream_from_before_epochs_gets_one_and_keeps_its_events(
        nats_server: EmbeddedNats) -> None:
    bus = await EventBus.connect(nats_server.url)
    config = (await bus.js.stream_info(subjects.STREAM)).config
    await bus.js.update_stream(replace(config, metadata={}))
    await bus.js.publish("conveyor.events.dev.commit.detected", b"{}", stream=subjects.STREAM)
    await bus.close()
    again = await EventBus.connect(nats_server.url)
    try:
        info = await again.js.stream_info(subjects.STREAM)
        assert (info.config.metadata or {}).get(EPOCH_KEY) == again.epoch != ""
        assert info.state.messages == 1
    finally:
        await again.close()
