"""Routing: parsing ``notifiers:`` and choosing routes for an event (pure, no servers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.errors import ConfigError
from orchestrator.notify.message import Severity
from orchestrator.notify.routing import (
    RateLimit,
    Route,
    matches_events,
    parse_routes,
    select_routes,
    severity_of,
)

FIXTURES = Path(__file__).parent / "fixtures" / "notify"
SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"


def load_event(name: str) -> Event:
    return Event.from_dict(json.loads((FIXTURES / "events" / f"{name}.json").read_text()))


def event(type_: str, env: str = "prod", *, correlation: str = SHA) -> Event:
    return new_event(type_, env=env, data={"revision": correlation}, correlation=correlation)


def routes_from(raw: dict[str, Any]) -> list[Route]:
    return parse_routes(raw)


def names(routes: list[Route]) -> list[str]:
    return [r.name for r in routes]


def test_parse_keeps_provider_settings_unexpanded_and_route_options_apart() -> None:
    raw = yaml.safe_load((FIXTURES / "notifiers.yaml").read_text())["notifiers"]
    routes = {r.name: r for r in parse_routes(raw)}

    assert list(routes) == ["chat", "prod-alerts", "applies-only", "statuses", "audit"]
    chat = routes["chat"]
    assert chat.settings == {"token": "${SLACK_TOKEN}", "channel": "#deploys"}
    assert chat.events == () and chat.environments == () and chat.severity is Severity.INFO
    alerts = routes["prod-alerts"]
    assert alerts.environments == ("prod", "prod-*") and alerts.severity is Severity.WARNING
    applies = routes["applies-only"]
    assert applies.rate_limit == RateLimit(per_minute=6, burst=2)
    assert applies.template.startswith("{{ env }}")
    assert "template" not in applies.settings and "rateLimit" not in applies.settings


@pytest.mark.parametrize(("raw", "field"), [
    ({"type": "pager"}, "notifiers.x.type"),
    ({"type": "slack", "severity": "critical"}, "notifiers.x.severity"),
    ({"type": "slack", "events": "conveyor.apply.*"[:0]}, "notifiers.x.events"),
    ({"type": "slack", "events": [1]}, "notifiers.x.events"),
    ({"type": "slack", "environments": {"prod": True}}, "notifiers.x.environments"),
    ({"type": "slack", "template": ["a"]}, "notifiers.x.template"),
    ({"type": "slack", "rateLimit": 5}, "notifiers.x.rateLimit"),
    ({"type": "slack", "rateLimit": {"perMinute": 0}}, "notifiers.x.rateLimit.perMinute"),
    ({"type": "github", "rateLimit": {"perMinute": 5}}, "notifiers.x.rateLimit"),
])
def test_parse_names_the_bad_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_routes({"x": raw})
    assert info.value.field == field


def test_a_single_string_is_a_one_item_list() -> None:
    (route,) = parse_routes({"x": {"type": "slack", "events": "apply.failed"}})
    assert route.events == ("apply.failed",)


def test_default_chat_events_are_the_terminal_outcomes() -> None:
    routes = routes_from({"chat": {"type": "slack"}})
    for type_ in (ev.RENDER_FAILED, ev.APPLY_SUCCEEDED, ev.APPLY_FAILED, ev.APPLY_SUPERSEDED,
                  ev.HEALTH_DEGRADED, ev.COMMIT_REJECTED):
        assert names(select_routes(routes, event(type_))) == ["chat"], type_
    for type_ in (ev.COMMIT_DETECTED, ev.APPLY_STARTED, ev.RENDER_SUCCEEDED,
                  ev.HEALTH_HEALTHY):
        assert select_routes(routes, event(type_)) == [], type_


def test_commit_status_routes_also_get_pending_and_running_events() -> None:
    routes = routes_from({"gh": {"type": "github"}, "gl": {"type": "gitlab"}})
    assert names(select_routes(routes, event(ev.APPLY_STARTED))) == ["gh", "gl"]
    assert names(select_routes(routes, event(ev.APPLY_SUCCEEDED))) == ["gh", "gl"]
    # nothing to put a status on: no commit, or an event that is not about a deployment
    assert select_routes(routes, event(ev.APPLY_FAILED, correlation="")) == []
    assert select_routes(routes, event(ev.DRIFT_DETECTED)) == []


@pytest.mark.parametrize(("patterns", "type_", "expected"), [
    (["conveyor.apply.*"], ev.APPLY_FAILED, True),
    (["conveyor.apply.*"], ev.RENDER_FAILED, False),
    (["conveyor.apply"], ev.APPLY_SUCCEEDED, True),  # a type prefix
    (["apply"], ev.APPLY_SUCCEEDED, True),  # "conveyor." may be left out
    (["render.failed"], ev.RENDER_FAILED, True),
    (["conveyor.app"], ev.APPLY_FAILED, False),  # prefixes stop at a dot
    (["*.failed"], ev.RENDER_FAILED, True),
    (["*"], ev.HEALTH_HEALTHY, True),
    (["apply", "!apply.skipped"], ev.APPLY_SKIPPED, False),
    (["apply", "!apply.skipped"], ev.APPLY_FAILED, True),
])
def test_event_patterns(patterns: list[str], type_: str, expected: bool) -> None:
    assert matches_events(patterns, type_) is expected


def test_environment_globs_and_events_about_no_environment() -> None:
    routes = routes_from({
        "prod": {"type": "slack", "environments": ["prod", "prod-*"]},
        "all": {"type": "slack"},
        "global": {"type": "slack", "environments": ["_"]},
    })
    assert names(select_routes(routes, event(ev.APPLY_FAILED, "prod-eu"))) == ["prod", "all"]
    assert names(select_routes(routes, event(ev.APPLY_FAILED, "dev"))) == ["all"]
    fetch = new_event(ev.SOURCE_FETCH_FAILED, env=ev.NO_ENV, data={}, key="x")
    assert names(select_routes(routes, fetch)) == ["all", "global"]


def test_severity_minimum() -> None:
    routes = routes_from({
        "errors": {"type": "slack", "severity": "error", "events": ["*"]},
        "warnings": {"type": "slack", "severity": "warning", "events": ["*"]},
        "all": {"type": "slack", "events": ["*"]},
    })
    assert names(select_routes(routes, event(ev.APPLY_FAILED))) == ["errors", "warnings", "all"]
    assert names(select_routes(routes, event(ev.DRIFT_DETECTED))) == ["warnings", "all"]
    assert names(select_routes(routes, event(ev.APPLY_SUPERSEDED))) == ["all"]


@pytest.mark.parametrize(("type_", "severity"), [
    (ev.APPLY_FAILED, Severity.ERROR), (ev.RENDER_DEAD, Severity.ERROR),
    (ev.HEALTH_DEGRADED, Severity.ERROR), (ev.COMMIT_REJECTED, Severity.ERROR),
    (ev.CONFIG_INVALID, Severity.ERROR), (ev.SOURCE_FETCH_FAILED, Severity.ERROR),
    (ev.DRIFT_DETECTED, Severity.WARNING), (ev.APPLY_RETRYING, Severity.WARNING),
    (ev.APPLY_SUPERSEDED, Severity.INFO), (ev.APPLY_SKIPPED, Severity.INFO),
    (ev.APPLY_SUCCEEDED, Severity.INFO), (ev.SOURCE_RECOVERED, Severity.INFO),
])
def test_severity_of(type_: str, severity: Severity) -> None:
    assert severity_of(event(type_)) is severity


def test_notify_events_are_never_routed_so_a_failing_notifier_cannot_loop() -> None:
    routes = routes_from({"all": {"type": "webhook", "events": ["*"]}})
    assert select_routes(routes, event(ev.NOTIFY_FAILED)) == []
    assert names(select_routes(routes, load_event("apply-failed"))) == ["all"]
