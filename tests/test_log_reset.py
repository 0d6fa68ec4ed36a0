"""A reset event log is detected, not obeyed.

With one replica a lost store comes back empty, with sequences from 1 again. The deploy
branches still carry the old log's ``Conveyor-Seq`` trailers, which are higher than anything the
new log will number for a while: without an identity for the log every new commit looked older
than what the target held and was "superseded", and status repeated the old head. Here the
stream's epoch goes into the trailers, so the applier knows those sequences belong to another
log and decides by digest alone.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from conveyor.demo import demo_files
from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.domain.state import EnvState
from orchestrator.projector import EPOCH_KEY
from services.api.app import ApiService
from tests.support.repos import Repo
from tests.support.waits import wait_for_events
from tests.test_spine import finished, running, settings_for, trigger

ENVS = {"dev", "prod"}


def trailers(repo: Repo, env: str) -> dict[str, str]:
    message = repo.log(f"deploy/{env}")[0]
    pairs = (line.split(": ", 1) for line in message.splitlines() if line.startswith("Conveyor-"))
    return {key.removeprefix("Conveyor-"): value for key, value in pairs}


def of_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == kind]


async def deploy_history(repo: Repo, server: EmbeddedNats, data: Path, bus: EventBus,
                         commits: int) -> str:
    """Several commits through the pipeline: the deploy branches get high Conveyor-Seq."""
    head = repo.commit(demo_files(), "initial")
    async with running(settings_for(repo, server, data)) as conveyor:
        await wait_for_events(bus, finished(head, ENVS))
        for n in range(commits):
            head = repo.commit(demo_files(tag=f"1.{20 + n}"), f"image {n}")
            await trigger(conveyor)
            await wait_for_events(bus, finished(head, ENVS))
        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        await wait_for_state(api, "dev", head)  # folded before the stop, not just logged
    return head


async def test_a_wiped_store_resumes_deploys_with_one_log_reset(
        repo: Repo, tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    bus = await EventBus.connect(server.url, name="test")
    old_epoch = bus.epoch
    old_head = await deploy_history(repo, server, tmp_path / "data", bus, commits=4)
    old_seq = int(trailers(repo, "dev")["Seq"])
    assert trailers(repo, "dev")["Log-Epoch"] == old_epoch
    await bus.close()
    await server.stop()

    shutil.rmtree(server.store_dir)  # the single server's disk is lost
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    bus = await EventBus.connect(server.url, name="test")
    try:
        assert bus.epoch != old_epoch
        async with running(settings_for(repo, server, tmp_path / "data")) as conveyor:
            # the watcher announces the head again: the targets hold its bundle already
            await wait_for_events(bus, finished(old_head, ENVS))
            new = repo.commit(demo_files(tag="1.29", dev_replicas=9), "after the reset")
            await trigger(conveyor)
            events = await wait_for_events(bus, finished(new, ENVS))
            detected = next(e for e in events
                            if e.type == ev.RENDER_SUCCEEDED and e.correlationid == new
                            and e.subject == "dev")
            # the precondition that used to stop deploys: the old log numbered higher
            assert int(detected.data["origin_seq"]) < old_seq
            api = conveyor.service("api")
            assert isinstance(api, ApiService)
            await wait_for_state(api, "dev", new)

        for env in ENVS:
            outcomes = [e.type for e in events if e.correlationid == new and e.subject == env
                        and e.type in (ev.APPLY_SUCCEEDED, ev.APPLY_SUPERSEDED,
                                       ev.APPLY_SKIPPED)]
            assert outcomes == [ev.APPLY_SUCCEEDED], (env, outcomes)
            assert trailers(repo, env)["Source-Commit"] == new
            assert trailers(repo, env)["Log-Epoch"] == bus.epoch
            resets = [e for e in of_type(events, ev.LOG_RESET) if e.subject == env]
            assert len(resets) == 1, resets
            assert resets[0].data["target_epoch"] == old_epoch
            assert resets[0].data["log_epoch"] == bus.epoch
        assert not of_type(events, ev.APPLY_SUPERSEDED)
        assert "nginx:1.29" in (repo.read("deploy/dev", "dev/deployment.apps-web.yaml") or "")
    finally:
        await bus.close()
        await server.stop()


async def wait_for_state(api: ApiService, env: str, revision: str) -> EnvState:
    """Until the api's status says ``revision`` is desired and applied in ``env``."""

    async def reached() -> EnvState:
        async with api.projector.changed:
            while True:
                state = api.projector.envs.get(env)
                if state is not None and state.last_applied_revision == revision \
                        and state.desired_revision == revision:
                    return state
                await api.projector.changed.wait()

    return await asyncio.wait_for(reached(), 30)


async def test_a_projection_of_another_log_is_not_shown(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    """The stream is lost but the state bucket survives (R1 on another server, say)."""
    head = await deploy_history(repo, nats_server, tmp_path / "data", bus, commits=1)
    stored = await bus.kv_get(subjects.STATE_BUCKET, "env.dev")
    assert stored is not None and stored[0]["last_applied_revision"] == head
    await bus.js.delete_stream(subjects.STREAM)
    await bus.close()

    again = await EventBus.connect(nats_server.url, name="test")
    try:
        async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
            api = conveyor.service("api")
            assert isinstance(api, ApiService)
            # the old records are gone: what is there now was folded from this log
            dev = api.projector.envs.get("dev")
            assert dev is None or dev.last_seq <= await again.last_seq()
            assert (await again.kv_get(subjects.STATE_BUCKET, EPOCH_KEY) or ("",))[0] \
                == again.epoch
            # the watcher's cursor (in the surviving bucket) belongs to the old log: the head
            # is announced into this one at once, not at the next commit, and the targets
            # (written under the old epoch) are recognised by digest with one log.reset each
            events = await wait_for_events(again, finished(head, ENVS))
            for env in ENVS:
                resets = [e for e in of_type(events, ev.LOG_RESET) if e.subject == env]
                assert len(resets) == 1, resets
                assert resets[0].data["log_epoch"] == again.epoch
                assert [e.type for e in events if e.correlationid == head and e.subject == env
                        and e.type.startswith("conveyor.apply.")
                        and e.type != ev.APPLY_STARTED] == [ev.APPLY_SKIPPED]  # it holds it
            await wait_for_state(api, "dev", head)
            cursor = await again.kv_get(subjects.STATE_BUCKET, "watcher.default")
            assert cursor is not None and cursor[0]["epoch"] == again.epoch
            new = repo.commit(demo_files(tag="1.30"), "after the stream was lost")
            await trigger(conveyor)
            events = await wait_for_events(again, finished(new, ENVS))
            state = await wait_for_state(api, "dev", new)
            assert state.deployments == 1  # counted by this log only (the head was skipped)
            assert len(of_type(events, ev.LOG_RESET)) == len(ENVS)  # no second one
            assert not of_type(events, ev.APPLY_SUPERSEDED)
    finally:
        await again.close()
