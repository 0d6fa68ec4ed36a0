"""``conveyor replay`` after a busy run through the real services: the live projection equals
the log's fold at the same sequence, a tampered one is reported, and nothing is re-executed."""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from conveyor.app import Conveyor
from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.commands.replay import replay_command
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.projector import Projector, dump_bucket
from services.api.app import ApiService
from services.git_watcher.service import GitWatcher
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

ENVS = ("dev", "qa", "staging", "prod")
TOKEN = "replay-token"
DONE = {ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED, ev.RENDER_FAILED,
        ev.APPLY_SUPERSEDED}


def config() -> str:
    return "environments:\n" + "".join(
        f"  {e}:\n    path: envs/{e}\n    target:\n      git:\n        branch: deploy/{e}\n"
        for e in ENVS)


def configmap(env: str, version: int, broken: bool = False) -> str:
    value = "[unclosed" if broken else f'"{version}"'
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: {env}\n"
            f"data:\n  version: {value}\n")


def finished(sha: str, envs: set[str]) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        return {e.subject for e in events if e.correlationid == sha and e.type in DONE} >= envs

    return check


async def caught_up(projector: Projector, bus: EventBus) -> None:
    """Until the projector has folded every event now in the log (awaited, not polled)."""
    last = await bus.last_seq()
    async with projector.changed:
        await asyncio.wait_for(projector.changed.wait_for(lambda: projector.position >= last), 30)


async def run_replay(capsys: pytest.CaptureFixture[str], *, api: str = "",
                     nats: str = "") -> tuple[int, str]:
    code = await replay_command(argparse.Namespace(api=api, nats=nats, output="text"))
    return code, capsys.readouterr().out


async def busy_run(repo: Repo, conveyor: Conveyor, bus: EventBus) -> str:
    """Many commits across the environments, some broken, some arriving two per poll."""
    watcher = conveyor.service("git-watcher")
    assert isinstance(watcher, GitWatcher)
    rng = random.Random(7)
    first = repo.commit({"conveyor.yaml": config(),
                         **{f"envs/{e}/cm.yaml": configmap(e, 0) for e in ENVS}}, "initial")
    await watcher.poll()
    await wait_for_events(bus, finished(first, set(ENVS)))
    for n in range(1, 25):
        touched = rng.sample(ENVS, rng.randint(1, 3))
        broken = touched[0] if n % 5 == 0 else None
        repo.commit({f"envs/{e}/cm.yaml": configmap(e, n, broken=e == broken) for e in touched},
                    f"change {n}: {', '.join(touched)}")
        if n % 3:  # otherwise two commits land between polls
            await watcher.poll()
    last = repo.commit({f"envs/{e}/cm.yaml": configmap(e, 99) for e in ENVS}, "all fixed")
    await watcher.poll()
    await wait_for_events(bus, finished(last, set(ENVS)))
    return last


async def test_replay_after_a_busy_run_matches_and_tampering_is_reported(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API_TOKEN", TOKEN)
    settings = settings_for(repo, nats_server, tmp_path / "data", api_token=TOKEN)
    async with running(settings) as conveyor:
        await busy_run(repo, conveyor, bus)
        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        await caught_up(api.projector, bus)
        events = [s.event async for s in bus.read()]
        types = {e.type for e in events}
        assert {ev.RENDER_FAILED, ev.APPLY_SUCCEEDED} <= types  # it was a busy run
        deploy_logs = {e: len(repo.log(f"deploy/{e}")) for e in ENVS}

        code, out = await run_replay(capsys, api=api.url)
        assert code == 0, out
        assert f"matches the log at sequence {api.projector.position}" in out
        code, out = await run_replay(capsys, nats=nats_server.url)  # no api: straight to NATS
        assert code == 0, out

        # replay only folds: no event was published, nothing was applied again
        assert await bus.last_seq() == len(events)
        assert {e: len(repo.log(f"deploy/{e}")) for e in ENVS} == deploy_logs
        streams = [s.config.name for s in await bus.js.streams_info()]
        assert not [n for n in streams if "replay" in (n or "")], "a replay bucket was left"

        # the live projection holds what the log says, history included
        live = await dump_bucket(bus, subjects.STATE_BUCKET)
        assert live["position"] == {"seq": len(events)}
        assert {k.split(".", 1)[1] for k in live if k.startswith("env.")} == set(ENVS)
        assert len(live["history.dev"]["entries"]) >= 2

        # tamper with the live projection: replay reports each difference and exits 1
        dev = live["env.dev"]
        await bus.kv_put(subjects.STATE_BUCKET, "env.dev",
                         {**dev, "last_applied_revision": "0" * 40})
        some_commit = next(k for k in live if k.startswith("commit."))
        await bus.kv(subjects.STATE_BUCKET).delete(some_commit)
        code, out = await run_replay(capsys, api=api.url)
        assert code == 1
        assert "2 difference(s)" in out
        assert (f"env.dev last_applied_revision: live \"{'0' * 40}\" != replayed "
                f"\"{dev['last_applied_revision']}\"") in out
        assert f"{some_commit}: missing from the live projection" in out
        code, _ = await run_replay(capsys, nats=nats_server.url)
        assert code == 1


async def test_replay_endpoint_needs_the_token_and_an_empty_log_replays_empty(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    repo.commit({"README.md": "no config yet\n"}, "empty")  # config.invalid: no environments
    settings = settings_for(repo, nats_server, tmp_path / "data", api_token=TOKEN)
    async with running(settings) as conveyor:
        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        await wait_for_events(bus, lambda evs: any(e.type == ev.CONFIG_INVALID for e in evs))
        await caught_up(api.projector, bus)
        async with aiohttp.ClientSession() as http, \
                http.post(f"{api.url}/api/v1/replay") as resp:
            assert resp.status == 401
        monkeypatch.setenv("CONVEYOR_API_TOKEN", TOKEN)
        code, out = await run_replay(capsys, api=api.url)
        assert code == 0, out
        assert "0 keys" not in out  # the position key: events about no environment count
