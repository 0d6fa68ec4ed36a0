"""Prometheus metrics: derived from published events, scraped from the api's /metrics."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from nats.js import api as jsapi
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conveyor.app import Conveyor
from conveyor.demo import demo_files
from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.metrics import Metrics
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from services.api.app import ApiService
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

T0 = "2026-01-01T12:00:00.000000Z"


def at(event: Event, time: str) -> Event:
    return event.with_time(time)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def chain() -> list[Event]:
    """A commit through render, apply and two notifications, with fixed times."""
    detected = at(new_event(ev.COMMIT_DETECTED, env="dev", correlation="c0ffee", key="k",
                            data={"revision": "c0ffee"}), T0)
    rendered = at(new_event(ev.RENDER_SUCCEEDED, env="dev", cause=detected,
                            data={"renderer": "kustomize", "duration_ms": 120.0}),
                  "2026-01-01T12:00:00.500000Z")
    applied = at(new_event(ev.APPLY_SUCCEEDED, env="dev", cause=rendered,
                           data={"target": "git deploy/dev", "duration_ms": 300}),
                 "2026-01-01T12:00:02.000000Z")
    sent = at(new_event(ev.NOTIFY_SENT, env="dev", cause=applied, key="chat",
                        data={"route": "chat", "provider": "slack"}),
              "2026-01-01T12:00:02.250000Z")
    failed = at(new_event(ev.NOTIFY_FAILED, env="dev", cause=applied, key="pager",
                          data={"route": "pager", "provider": "teams", "error": "403"}),
                "2026-01-01T12:00:02.250000Z")
    return [detected, rendered, applied, sent, failed]


def test_a_started_apply_is_a_step_not_an_effect_of_the_stage() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    detected, rendered, applied = chain()[:3]
    started = at(new_event(ev.APPLY_STARTED, env="dev", cause=rendered, data={}),
                 "2026-01-01T12:00:00.600000Z")
    for e in (detected, rendered, started, applied):
        m.event_published(e)
    assert value(reg, "conveyor_stage_latency_seconds_count", stage="apply") == 1
    assert value(reg, "conveyor_stage_latency_seconds_sum", stage="apply") == pytest.approx(1.5)
    assert value(reg, "conveyor_events_total", type=ev.APPLY_STARTED, outcome="started") == 1


def test_events_are_counted_by_type_and_outcome_and_duplicates_are_not() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    events = chain()
    for e in events:
        m.event_published(e)
    m.event_published(events[2], duplicate=True)  # the server dropped a re-publish
    assert value(reg, "conveyor_events_total", type=ev.APPLY_SUCCEEDED,
                 outcome="succeeded") == 1
    assert value(reg, "conveyor_events_total", type=ev.COMMIT_DETECTED, outcome="detected") == 1
    assert value(reg, "conveyor_events_total", type=ev.NOTIFY_FAILED, outcome="failed") == 1


def test_stage_latency_is_cause_to_effect_from_event_times() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    for e in chain():
        m.event_published(e)
    assert value(reg, "conveyor_stage_latency_seconds_count", stage="render") == 1
    assert value(reg, "conveyor_stage_latency_seconds_sum", stage="render") == pytest.approx(0.5)
    assert value(reg, "conveyor_stage_latency_seconds_sum", stage="apply") == pytest.approx(1.5)
    assert value(reg, "conveyor_stage_latency_seconds_count", stage="notify") == 2
    assert value(reg, "conveyor_stage_latency_seconds_sum", stage="notify") == pytest.approx(0.5)
    # the root has no cause: nothing observed for the commit stage
    assert value(reg, "conveyor_stage_latency_seconds_count", stage="commit") == 0
    assert value(reg, "conveyor_stage_latency_seconds_bucket", stage="render", le="0.5") == 1
    assert value(reg, "conveyor_stage_latency_seconds_bucket", stage="render", le="0.25") == 0


def test_an_effect_whose_cause_was_published_elsewhere_is_not_guessed() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.event_published(chain()[1])  # render.succeeded without its commit.detected
    assert value(reg, "conveyor_stage_latency_seconds_count", stage="render") == 0
    assert value(reg, "conveyor_render_duration_seconds_count", renderer="kustomize") == 1


def test_render_apply_and_notification_series_come_from_event_data() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    for e in chain():
        m.event_published(e)
    assert value(reg, "conveyor_render_duration_seconds_sum", renderer="kustomize") \
        == pytest.approx(0.12)
    assert value(reg, "conveyor_apply_duration_seconds_sum", target="git") == pytest.approx(0.3)
    assert value(reg, "conveyor_notifications_total", provider="slack", outcome="sent") == 1
    assert value(reg, "conveyor_notifications_total", provider="teams", outcome="failed") == 1
    # a failure before any target or renderer was known is still measured, as "unknown"
    m.event_published(new_event(ev.APPLY_FAILED, env="dev", key="x",
                                data={"error": "boom", "duration_ms": 5}))
    m.event_published(new_event(ev.RENDER_FAILED, env="dev", key="y",
                                data={"env": {"render": {"type": "helm"}}, "duration_ms": 7}))
    m.event_published(new_event(ev.RENDER_FAILED, env="dev", key="z",
                                data={"duration_ms": "not a number"}))
    assert value(reg, "conveyor_apply_duration_seconds_count", target="unknown") == 1
    assert value(reg, "conveyor_render_duration_seconds_count", renderer="helm") == 1
    assert value(reg, "conveyor_events_total", type=ev.RENDER_FAILED, outcome="failed") == 2


def test_a_broken_event_never_breaks_publishing() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    odd = Event(type="conveyor.apply.succeeded", subject="dev", id="x", time="not a time",
                data={"duration_ms": 1})
    m.event_published(odd)
    assert value(reg, "conveyor_events_total", type=ev.APPLY_SUCCEEDED, outcome="succeeded") == 1


def test_consumer_pending_gauge_drops_consumers_that_went_away() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.set_consumer_pending({"renderer": 3, "applier": 0})
    assert value(reg, "conveyor_consumer_pending", consumer="renderer") == 3
    m.set_consumer_pending({"applier": 1})
    assert reg.get_sample_value("conveyor_consumer_pending", {"consumer": "renderer"}) is None
    assert value(reg, "conveyor_consumer_pending", consumer="applier") == 1


async def test_consumer_pending_reads_jetstream(bus: EventBus) -> None:
    await bus.js.add_consumer(subjects.STREAM, jsapi.ConsumerConfig(
        durable_name="probe", ack_policy=jsapi.AckPolicy.EXPLICIT,
        filter_subject=subjects.filter_for("conveyor", ["dev"])[0]))
    for i in range(3):
        await bus.publish(new_event(ev.REFRESH_REQUESTED, env="dev", key=str(i), data={}))
    await bus.publish(new_event(ev.REFRESH_REQUESTED, env="prod", key="p", data={}))
    # an ephemeral reader is not a queue and gets no series
    async for _ in bus.read():
        break
    reg = CollectorRegistry()
    pending = await bus.consumer_pending()
    assert pending == {"probe": 3}
    Metrics(reg).set_consumer_pending(pending)
    assert value(reg, "conveyor_consumer_pending", consumer="probe") == 3


# -- the api's /metrics after a real pipeline run -----------------------------------------------

def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_api_metrics_after_a_pipeline_run(repo: Repo, nats_server: EmbeddedNats,
                                                bus: EventBus, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    async def hook(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    monkeypatch.setenv("OPS_WEBHOOK_URL", f"http://127.0.0.1:{runner.addresses[0][1]}/hook")
    files = demo_files()
    files["conveyor.yaml"] += "notifiers:\n  ops:\n    type: webhook\n    url: ${OPS_WEBHOOK_URL}\n"
    first = repo.commit(files, "initial")
    # the Conveyor counts on its own registry: everything in it is this run's
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                        repo=str(repo.path), branch="main", listen="127.0.0.1:0",
                        interval=3600.0, secrets=SecretPolicy(env_allow=("OPS_*",)))
    conveyor = Conveyor(settings)
    await conveyor.start()
    try:
        await wait_for_events(bus, lambda evs: sum(
            e.type == ev.NOTIFY_SENT and e.correlationid == first for e in evs) >= 2)
        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        async with aiohttp.ClientSession() as http, http.get(f"{api.url}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    finally:
        await conveyor.stop()
        await runner.cleanup()
    got = scrape(text)
    assert sample(got, "conveyor_events_total", type=ev.APPLY_SUCCEEDED,
                  outcome="succeeded") == 2
    assert sample(got, "conveyor_events_total", type=ev.COMMIT_DETECTED,
                  outcome="detected") == 2
    assert sample(got, "conveyor_notifications_total", provider="webhook",
                  outcome="sent") == 2
    # every hop of both environments was published in this process, so each was timed
    assert sample(got, "conveyor_stage_latency_seconds_count",
                  stage="render") == 2
    assert sample(got, "conveyor_stage_latency_seconds_count",
                  stage="apply") == 2
    assert sample(got, "conveyor_render_duration_seconds_count",
                  renderer="kustomize") == 2
    assert sample(got, "conveyor_apply_duration_seconds_count",
                  target="git") == 2
    # queue depth per durable consumer, read from JetStream at scrape time
    consumers = {dict(labels)["consumer"] for name, labels in got
                 if name == "conveyor_consumer_pending"}
    assert {"projector", "renderer", "applier", "git-watcher"} <= consumers
    assert sample(got, "conveyor_consumer_pending", consumer="renderer") == 0
