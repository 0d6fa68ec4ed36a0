"""Retention is configurable from the command line, and replay is honest about a trimmed log."""

from __future__ import annotations

import pytest

from conveyor import cli, options
from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus, Retention
from orchestrator.commands.replay import replay
from orchestrator.domain import events as ev
from orchestrator.domain.events import new_event
from orchestrator.domain.state import project
from orchestrator.projector import encode, records


def test_up_and_run_take_the_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(
        ["up", "--repo", ".", "--retention-age", "7d", "--retention-bytes", "1000000"])
    assert options.settings_from_args(args).retention == Retention(7 * 86400.0, 1_000_000)
    monkeypatch.setenv("CONVEYOR_RETENTION_AGE", "12h")
    args = cli.build_parser().parse_args(["run", "renderer", "--nats", "nats://x:4222"])
    assert options.settings_from_args(args).retention == Retention(43200.0, -1)
    monkeypatch.delenv("CONVEYOR_RETENTION_AGE")
    args = cli.build_parser().parse_args(["up", "--repo", "."])
    # without flags a process leaves the stream's retention alone (unlimited when it creates it)
    assert options.settings_from_args(args).retention is None


async def test_a_process_without_flags_keeps_the_configured_retention(
        nats_server: EmbeddedNats) -> None:
    first = await EventBus.connect(nats_server.url, retention=Retention(3600.0, -1))
    await first.close()
    second = await EventBus.connect(nats_server.url)  # e.g. `conveyor run renderer`
    try:
        config = (await second.js.stream_info(subjects.STREAM)).config
        assert config.max_age == 3600.0
    finally:
        await second.close()


def test_a_bad_retention_age_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["up", "--retention-age", "soon"])
    assert "invalid duration 'soon'" in capsys.readouterr().err


async def test_the_stream_gets_the_retention(nats_server: EmbeddedNats) -> None:
    bus = await EventBus.connect(nats_server.url, retention=Retention(3600.0, 50_000_000))
    try:
        config = (await bus.js.stream_info(subjects.STREAM)).config
        assert (config.max_age, config.max_bytes) == (3600.0, 50_000_000)
    finally:
        await bus.close()


async def test_replay_of_a_trimmed_log_reports_what_it_cannot_rebuild(bus: EventBus) -> None:
    events = [new_event(ev.COMMIT_DETECTED, env="dev", correlation=f"{i:040x}", data={})
              for i in range(10)]
    for e in events:
        await bus.publish(e)
    live = records(project(enumerate(events, 1)))  # what the projector folded before trimming
    kv = bus.kv(subjects.STATE_BUCKET)
    for key, value in live.items():
        await kv.put(key, encode(value))
    assert (await replay(bus)).equal
    await bus.js.purge_stream(subjects.STREAM, keep=4)  # what retention does to old events
    report = await replay(bus)
    assert report.first_seq == 7 and report.seq == 10 and report.events == 4
    assert not report.equal
    missing = {d.key for d in report.differences if d.replayed is None}
    assert missing == {f"commit.{i:040x}" for i in range(6)}
