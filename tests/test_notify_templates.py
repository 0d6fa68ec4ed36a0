"""Templates: the default message, user templates, and falling back when they break."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.notify.message import Severity
from orchestrator.notify.ratelimit import digest
from orchestrator.notify.routing import Route
from orchestrator.notify.templates import commit_url, human_duration, render, render_route

FIXTURES = Path(__file__).parent / "fixtures" / "notify"


def load_event(name: str) -> Event:
    return Event.from_dict(json.loads((FIXTURES / "events" / f"{name}.json").read_text()))


def test_default_message_names_env_commit_author_outcome_duration_and_link() -> None:
    message = render(load_event("apply-failed"))

    assert message.title == "prod: apply failed \u00b7 9fceb02"
    assert message.text.splitlines() == [
        'Commit 9fceb02 "Bump api to 1.4 & raise <limits>" by Ada Lovelace',
        "prod: apply failed in 4.2s (kubernetes prod).",
        'Error: deployments.apps "api" is invalid: spec.replicas: must be >= 0',
        "Details: https://github.com/acme/deploy/commit/"
        "9fceb02d0ae598e95dc970b74767f19372d61af8",
    ]
    assert message.severity is Severity.ERROR and message.tone == "failure"
    assert message.outcome == "failed"
    assert [(f.name, f.value) for f in message.fields] == [
        ("Environment", "prod"), ("Commit", "9fceb02"), ("Author", "Ada Lovelace"),
        ("Duration", "4.2s"), ("Target", "kubernetes prod"),
    ]
    assert message.link == ("https://github.com/acme/deploy/commit/"
                            "9fceb02d0ae598e95dc970b74767f19372d61af8")
    assert message.key == "9fceb02d0ae598e95dc970b74767f19372d61af8:prod"
    assert message.template_error == ""


def test_success_is_green_and_minutes_read_as_minutes() -> None:
    message = render(load_event("apply-succeeded"))
    assert message.tone == "success" and message.severity is Severity.INFO
    assert "dev: apply succeeded in 1m 5s (git deploy/dev)." in message.text
    assert "Error" not in message.text


def test_a_user_template_replaces_the_text_only() -> None:
    route = Route(name="r", type="slack",
                  template="{{ env | upper }} {{ outcome }} {{ commit.short }} "
                           "{{ data.objects }} objects",
                  link="https://conveyor.example.com/envs/{{ env }}/{{ commit.sha[:12] }}")
    message = render_route(route, load_event("apply-succeeded"))
    assert message.text == "DEV succeeded 9fceb02 12 objects"
    assert message.title == "dev: apply succeeded \u00b7 9fceb02"
    assert message.link == "https://conveyor.example.com/envs/dev/9fceb02d0ae5"
    assert message.template_error == ""


@pytest.mark.parametrize(("template", "reason"), [
    ("{% if %}", "syntax error on line 1"),
    ("{{ commit.sha }\n", "syntax error on line 1"),
    ("{{ commit.no_such_field }}", "UndefinedError"),  # StrictUndefined: typos are errors
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ ''.__class__.__mro__ }}", "SecurityError"),  # the sandbox refuses
    ("{% for i in range(10**9) %}x{% endfor %}", "OverflowError"),  # range is capped
    ("{{ data.update({'error': 'x'}) }}", "SecurityError"),  # immutable: no mutation
])
def test_a_broken_template_falls_back_to_the_default_and_says_so(template: str,
                                                                 reason: str) -> None:
    default = render(load_event("apply-failed"))
    message = render(load_event("apply-failed"), template=template)

    assert reason in message.template_error
    assert message.template_error.startswith("template failed")
    assert message.text.startswith(default.text)
    assert "This notifier's template failed" in message.text
    assert "showing the default message" in message.text


def test_a_broken_link_template_keeps_the_default_link_and_the_user_text() -> None:
    message = render(load_event("apply-failed"), template="{{ env }}", link="{{ nope }}")
    assert message.link.startswith("https://github.com/acme/deploy/commit/")
    assert message.text.startswith("prod\n")
    assert "link template failed" in message.template_error


def test_events_about_no_environment_and_without_a_commit() -> None:
    fetch = new_event(ev.SOURCE_FETCH_FAILED, env=ev.NO_ENV,
                      data={"error": "could not resolve host"}, key="k")
    message = render(fetch)
    assert message.title == "all environments: source fetch failed"
    assert message.text.splitlines() == [
        "all environments: source fetch failed.",
        "Error: could not resolve host",
    ]
    assert message.key == "" and message.link == ""


def test_digest_message_lists_what_the_rate_limit_held_back() -> None:
    held = [new_event(ev.APPLY_SUCCEEDED if i % 2 else ev.APPLY_FAILED, env=env,
                      data={"short": f"abc{i}", "message": f"change {i}"},
                      correlation=f"sha{i}")
            for i, env in enumerate(["dev", "stage", "prod"])]
    message = render(digest(held))
    assert message.title == "3 more deployments: dev, prod, stage"
    assert message.severity is Severity.ERROR and message.tone == "failure"
    assert message.text.splitlines() == [
        "3 more notifications were held back by this notifier's rate limit:",
        "- dev abc0 apply failed: change 0",
        "- stage abc1 apply succeeded: change 1",
        "- prod abc2 apply failed: change 2",
    ]


@pytest.mark.parametrize(("ms", "text"), [
    (4200, "4.2s"), (12_400, "12s"), (60_000, "1m"), (65_000, "1m 5s"),
    (3_720_000, "1h 2m"), (None, ""), ("fast", ""), (-1, ""),
])
def test_human_duration(ms: object, text: str) -> None:
    assert human_duration(ms) == text


@pytest.mark.parametrize(("repo", "url"), [
    ("https://github.com/acme/deploy.git", "https://github.com/acme/deploy/commit/abc"),
    ("https://gitlab.example.com/g/sub/app", "https://gitlab.example.com/g/sub/app/commit/abc"),
    ("git@github.com:acme/deploy.git", "https://github.com/acme/deploy/commit/abc"),
    ("/srv/git/deploy", ""),
])
def test_commit_url(repo: str, url: str) -> None:
    assert commit_url(repo, "abc") == url
