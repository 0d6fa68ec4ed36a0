"""Record before effect; finish what was done.

An applier that dies after writing the target but before publishing its outcome leaves an
``apply.started`` behind, and the message comes back (to another process) once its ack wait
runs out. If a newer commit was applied in between, the target's head is newer than the
redelivered render: it used to be recorded ``superseded`` though the branch shows it deployed.
Here the dead applier is the applier's own consumer (same durable, same spec) whose handler
does the first half of an apply with the real target and then never answers; its connection
is closed, as a SIGKILL would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from conveyor.app import Conveyor
from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import decode_bundle
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.state import EnvState
from orchestrator.resources import Resources
from orchestrator.runtime import Consumer, Delivery, Outcome
from orchestrator.settings import Settings
from services.api.app import ApiService
from services.applier.service import Applier
from tests.support.repos import Repo
from tests.support.waits import wait_for_events
from tests.test_log_reset import trailers, wait_for_state
from tests.test_spine import settings_for

ENVS = {"dev", "prod"}
OUTCOMES = {ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_SUPERSEDED, ev.APPLY_FAILED}


@contextlib.asynccontextmanager
async def services(settings: Settings, *names: str) -> AsyncIterator[Conveyor]:
    conveyor = Conveyor(settings, names=names)
    await conveyor.start()
    try:
        yield conveyor
    finally:
        await conveyor.stop()


def rendered(sha: str):  # type: ignore[no-untyped-def]
    def check(events: list[Event]) -> bool:
        return {e.subject for e in events
                if e.type == ev.RENDER_SUCCEEDED and e.correlationid == sha} >= ENVS
    return check


def outcomes(sha: str, count: int = 1):  # type: ignore[no-untyped-def]
    def check(events: list[Event]) -> bool:
        done = [e.subject for e in events if e.type in OUTCOMES and e.correlationid == sha]
        return all(done.count(env) >= count for env in ENVS)
    return check


async def die_after_the_effect(bus: EventBus, settings: Settings, envs: set[str]) -> None:
    """An applier that publishes ``apply.started``, writes the target, and dies."""
    applier = Applier(Resources.around(bus, settings))
    written: set[str] = set()
    all_written = asyncio.Event()

    async def half_apply(delivery: Delivery) -> Outcome:
        event = delivery.event
        target = applier.target_for(event.data["env"], event.data)
        await bus.publish(new_event(ev.APPLY_STARTED, env=event.subject, cause=event,
                                    source="conveyor/applier", data={"attempt": 1}))
        payload = await bus.get_bundle(str(event.data["digest"]))
        assert payload is not None
        await target.apply(replace(applier._request(event), objects=decode_bundle(payload)))
        written.add(event.subject)
        if written >= envs:
            all_written.set()
        await asyncio.Event().wait()  # the success publish never comes
        raise AssertionError("unreachable")

    consumer = Consumer(bus, replace(applier.consumer_spec(), handler=half_apply))
    await consumer.start()
    await asyncio.wait_for(all_written.wait(), 30)
    await bus.nc.close()  # SIGKILL: no ack, no nak; the server redelivers after ack_wait
    await consumer.stop(grace=0)


async def folded(api: ApiService, seq: int) -> EnvState:
    """dev's state once the projector has folded the log up to ``seq``."""
    async def reached() -> EnvState:
        async with api.projector.changed:
            while api.projector.position < seq:
                await api.projector.changed.wait()
        return api.projector.envs["dev"]

    return await asyncio.wait_for(reached(), 30)


async def test_a_redelivered_apply_already_on_the_target_is_succeeded_not_superseded(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    settings = settings_for(repo, nats_server, tmp_path / "data")
    first = repo.commit(demo_files(), "initial")
    async with services(settings, "api", "renderer", "git-watcher") as upstream:
        await wait_for_events(bus, rendered(first))
        dying = await EventBus.connect(nats_server.url, name="dying-applier")
        await die_after_the_effect(dying, settings, ENVS)
        assert {trailers(repo, env)["Source-Commit"] for env in ENVS} == {first}

        second = repo.commit(demo_files(tag="1.28"), "bump")
        watcher = upstream.service("git-watcher")
        await watcher.poll()  # type: ignore[attr-defined]
        await wait_for_events(bus, rendered(second))
        async with services(settings, "applier") as appliers:
            # the newer commit goes first; the dead one's message returns after its ack wait
            events = await wait_for_events(bus, lambda es: outcomes(second)(es)
                                           and outcomes(first)(es), timeout=60)
            api = upstream.service("api")
            assert isinstance(api, ApiService)
            await wait_for_state(api, "dev", second)
            state = await folded(api, await bus.last_seq())

            # the same answer when both wait in one lane (the supersede path)
            applier = appliers.service("applier")
            assert isinstance(applier, Applier)
            older = next(s for s in events if s.type == ev.RENDER_SUCCEEDED
                         and s.correlationid == first and s.subject == "dev")
            newer = next(s for s in events if s.type == ev.RENDER_SUCCEEDED
                         and s.correlationid == second and s.subject == "dev")
            redelivered = await applier.supersede(Delivery(older, 1, 2), Delivery(newer, 2, 1))
            fresh = await applier.supersede(Delivery(older, 1, 1), Delivery(newer, 2, 1))

    for env in ENVS:
        mine = [e for e in events if e.subject == env and e.type in OUTCOMES]
        assert [(e.correlationid, e.type) for e in mine if e.correlationid == first] == \
            [(first, ev.APPLY_SUCCEEDED)], mine
        recognised = next(e for e in mine if e.correlationid == first)
        assert recognised.data["summary"] == "applied before a restart"
        assert [e.type for e in mine if e.correlationid == second] == [ev.APPLY_SUCCEEDED]
        # record before effect: every apply's started precedes its outcome in the log
        kinds = [(e.correlationid, e.type) for e in events if e.subject == env]
        for sha in (first, second):
            assert kinds.index((sha, ev.APPLY_STARTED)) < kinds.index((sha, ev.APPLY_SUCCEEDED))
        assert trailers(repo, env)["Source-Commit"] == second  # newest last
        assert len(repo.log(f"deploy/{env}")) == 2  # each applied once
    assert state.last_applied_revision == second and state.deployments == 2
    assert [e.type for e in redelivered] == [ev.APPLY_SUCCEEDED]
    assert [e.type for e in fresh] == [ev.APPLY_SUPERSEDED]
