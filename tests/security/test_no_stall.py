"""Nothing stalls on one bad commit (review: medium and low findings).

A 1.2 MB commit subject made every publish fail with "maximum payload exceeded", forever: no
event, no later commit. Deep JSON crashed the renderer on each redelivery, and a namespace "."
crash-looped the applier. Now oversized fields are cut with a marker and the event is
published, deep JSON is a ``render.failed`` naming the file, a bad namespace is refused with
the field, and the next good commit deploys.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.config import parse_config
from orchestrator.domain.events import fit, new_event
from orchestrator.errors import ConfigError
from services.git_watcher.config_check import check_config
from tests.security.pipeline import (
    CONFIG,
    configmap,
    finished,
    good_files,
    next_good_commit_deploys,
    of,
    poll,
)
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

HUGE = "x" * 1_200_000


def test_fit_cuts_the_largest_fields_with_a_marker() -> None:
    event = new_event(ev.RENDER_FAILED, env="app", correlation="a" * 40, source="t",
                      data={"message": HUGE, "errors": ["e" * 1000] * 2000, "short": "abc"})
    small = fit(event, 64 << 10)
    assert len(small.to_json()) <= 64 << 10
    assert small.id == event.id and small.data["short"] == "abc"
    assert "[truncated" in small.data["message"] and small.data["message"].startswith("xxx")
    assert "message" in small.data["truncated"]
    assert fit(small, 64 << 10) is small  # what fits is left alone


async def test_an_oversized_event_is_published_cut(bus: EventBus) -> None:
    event = new_event(ev.RENDER_FAILED, env="app", correlation="b" * 40, source="t",
                      data={"error": HUGE})
    published = await bus.publish(event)
    stored = await bus.get_event(published.seq)
    assert stored is not None and stored.event.id == event.id
    assert "[truncated" in stored.event.data["error"]


async def test_a_huge_commit_subject_flows_and_the_next_commit_too(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(good_files("v1"), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        attack = repo.commit({"app/cm.yaml": configmap("v2")}, HUGE)
        await poll(conveyor)
        events = await wait_for_events(bus, finished(attack, {"app"}))
        assert of(events, attack, "app")[-1] == ev.APPLY_SUCCEEDED
        detected = next(e for e in events if e.type == ev.COMMIT_DETECTED
                        and e.correlationid == attack)
        assert len(detected.data["message"]) < 2000 and "[truncated" in detected.data["message"]
        await next_good_commit_deploys(conveyor, bus, repo)


async def test_deep_json_is_render_failed_once(repo: Repo, nats_server: EmbeddedNats,
                                               bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(good_files("v1"), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        attack = repo.commit({"app/deep.json": "[" * 100_000 + "]" * 100_000}, "deep")
        await poll(conveyor)
        events = await wait_for_events(bus, finished(attack, {"app"}))
        assert of(events, attack, "app") == [ev.COMMIT_DETECTED, ev.RENDER_FAILED]
        failed = next(e for e in events if e.type == ev.RENDER_FAILED)
        assert "app/deep.json:1:1: nesting deeper than" in failed.data["error"]
        repo.commit({"app/deep.json": None}, "remove it")
        await next_good_commit_deploys(conveyor, bus, repo)


@pytest.mark.parametrize("field", ["namespace", "inventoryNamespace"])
def test_a_namespace_that_is_no_name_is_config_invalid(field: str) -> None:
    text = ("environments:\n  app:\n    path: app\n    target:\n      kubernetes:\n"
            f"        {field}: '.'\n")
    with pytest.raises(ConfigError) as info:
        check_config(parse_config(text))
    assert info.value.field == "environments.app.target"
    assert f"target.kubernetes.{field}: '.' is not a namespace name" in str(info.value)


async def test_an_object_in_namespace_dot_is_render_failed(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(good_files("v1"), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        bad = configmap("v2").replace("metadata:\n", "metadata:\n  namespace: '.'\n")
        attack = repo.commit({"app/cm.yaml": bad}, "namespace dot")
        await poll(conveyor)
        events = await wait_for_events(bus, finished(attack, {"app"}))
        assert of(events, attack, "app") == [ev.COMMIT_DETECTED, ev.RENDER_FAILED]
        failed = next(e for e in events if e.type == ev.RENDER_FAILED)
        assert "app/cm.yaml:4" in failed.data["error"] and "not a namespace name" in \
            failed.data["error"]
        await next_good_commit_deploys(conveyor, bus, repo)


async def test_a_huge_conveyor_yaml_is_config_invalid_unread(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(good_files("v1"), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        attack = repo.commit({"conveyor.yaml": CONFIG + "#" * (2 << 20) + "\n"}, "2 MiB config")
        await poll(conveyor)
        events = await wait_for_events(bus, lambda evs: ev.CONFIG_INVALID in of(evs, attack)
                                       and finished(attack, {"app"})(evs))
        invalid = next(e for e in events if e.type == ev.CONFIG_INVALID)
        assert "over the 262144-byte limit" in invalid.data["error"]
        await next_good_commit_deploys(conveyor, bus, repo, config=CONFIG)
