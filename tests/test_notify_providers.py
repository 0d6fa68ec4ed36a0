"""Providers as pure functions: settings, limits, and reading answers (no servers)."""

from __future__ import annotations

import json
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.errors import ConfigError
from orchestrator.notify import providers
from orchestrator.notify.message import Response, read_http, retry_after_seconds
from orchestrator.notify.providers.base import repo_path, with_query
from orchestrator.notify.providers.github import GitHubStatus
from orchestrator.notify.providers.slack import SlackBot, SlackWebhook
from orchestrator.notify.templates import render

FIXTURES = Path(__file__).parent / "fixtures" / "notify"
NOW = 1_764_148_000.0


def load_event(name: str) -> Event:
    return Event.from_dict(json.loads((FIXTURES / "events" / f"{name}.json").read_text()))


def response(status: int, body: Any = b"", **headers: str) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(status, {k.lower().replace("_", "-"): v for k, v in headers.items()}, raw)


@pytest.mark.parametrize(("kind", "settings", "field"), [
    ("slack", {}, "notifiers.n.url"),
    ("slack", {"token": "xoxb"}, "notifiers.n.channel"),
    ("slack", {"url": "hooks.slack.com/services/x"}, "notifiers.n.url"),
    ("teams", {"url": "ftp://x"}, "notifiers.n.url"),
    ("discord", {"url": ""}, "notifiers.n.url"),
    ("googlechat", {"url": "https://chat.googleapis.com/x", "style": "fancy"},
     "notifiers.n.style"),
    ("webhook", {"url": "https://x", "method": "GET"}, "notifiers.n.method"),
    ("webhook", {"url": "https://x", "headers": ["a"]}, "notifiers.n.headers"),
    ("github", {}, "notifiers.n.token"),
    ("gitlab", {"token": "t", "api": "not a url"}, "notifiers.n.api"),
    ("pager", {}, "notifiers.n.type"),
])
def test_bad_settings_name_the_field_and_never_the_value(kind: str, settings: dict[str, Any],
                                                         field: str) -> None:
    with pytest.raises(ConfigError) as info:
        providers.create(kind, settings, "n")
    assert info.value.field == field
    assert "hooks.slack.com" not in str(info.value)


def test_slack_is_a_bot_with_a_token_and_a_webhook_without() -> None:
    assert isinstance(providers.create("slack", {"token": "x", "channel": "#c"}), SlackBot)
    assert isinstance(providers.create("slack", {"url": "https://h/s"}), SlackWebhook)


@pytest.mark.parametrize(("resp", "ok", "retryable", "stale", "delay"), [
    (response(200, {"ok": True, "channel": "C1", "ts": "1.0"}), True, False, False, None),
    (response(200, {"ok": False, "error": "invalid_auth"}), False, False, False, None),
    (response(200, {"ok": False, "error": "fatal_error"}), False, True, False, None),
    (response(200, {"ok": False, "error": "edit_window_closed"}), False, False, True, None),
    (response(429, {"ok": False, "error": "ratelimited"}, retry_after="7"), False, True, False,
     7.0),
    (response(200, b"<html>proxy</html>"), False, False, False, None),
    (response(503, b"unavailable"), False, True, False, None),
])
def test_slack_web_api_answers(resp: Response, ok: bool, retryable: bool, stale: bool,
                               delay: float | None) -> None:
    answer = SlackBot("xoxb", "#c").read(resp, ref="C1:0.5", now=NOW)
    assert (answer.ok, answer.retryable, answer.stale_ref, answer.retry_after) == (
        ok, retryable, stale, delay)
    if ok:
        assert answer.message_ref == "C1:1.0"


def test_retry_after_forms() -> None:
    assert retry_after_seconds(response(429, retry_after="12")) == 12.0
    date = formatdate(NOW + 30, usegmt=True)
    assert retry_after_seconds(response(503, retry_after=date), now=NOW) == pytest.approx(30)
    assert retry_after_seconds(response(503, retry_after=date)) is None  # no clock, no delay
    assert retry_after_seconds(response(429, {"retry_after": 0.5})) == 0.5
    assert retry_after_seconds(response(429, {"retry_after": True})) is None
    assert retry_after_seconds(response(429, b"slow down")) is None


@pytest.mark.parametrize(("status", "ok", "retryable"), [
    (200, True, False), (202, True, False), (204, True, False), (301, False, False),
    (400, False, False), (401, False, False), (403, False, False), (404, False, False),
    (408, False, True), (410, False, False), (425, False, True), (429, False, True),
    (500, False, True), (503, False, True),
])
def test_common_http_reading(status: int, ok: bool, retryable: bool) -> None:
    answer = read_http(response(status, b"x"))
    assert (answer.ok, answer.retryable) == (ok, retryable)


def test_github_primary_rate_limit_waits_for_the_reset() -> None:
    gh = GitHubStatus(token="t", repo="a/b")
    exhausted = response(403, {"message": "API rate limit exceeded"},
                         x_ratelimit_remaining="0", x_ratelimit_reset=str(int(NOW) + 90))
    answer = gh.read(exhausted, now=NOW)
    assert not answer.ok and answer.retryable and answer.retry_after == pytest.approx(90)
    forbidden = gh.read(response(403, {"message": "Resource not accessible"}), now=NOW)
    assert not forbidden.ok and not forbidden.retryable


def test_github_description_fits_140_characters() -> None:
    event = load_event("apply-failed")
    long_env = new_event(ev.APPLY_FAILED, env="e" * 64, correlation="a" * 40,
                         data={"message": "x" * 300})
    gh = GitHubStatus(token="t", repo="a/b")
    for e in (event, long_env):
        body = gh.build(render(e), e).json()
        assert len(body["description"]) <= 140


def test_github_needs_a_repository() -> None:
    event = new_event(ev.APPLY_FAILED, env="prod", correlation="a" * 40,
                      data={"repo_url": "/srv/git/deploy"})
    with pytest.raises(ConfigError, match="owner/name"):
        GitHubStatus(token="t").build(render(event), event)


def test_discord_embed_respects_discord_limits() -> None:
    event = new_event(ev.APPLY_FAILED, env="prod", correlation="a" * 40,
                      data={"error": "e" * 10_000, "author": "a" * 2000})
    discord = providers.create("discord", {"url": "https://discord.com/api/webhooks/1/t"})
    (embed,) = discord.build(render(event), event).json()["embeds"]
    assert len(embed["title"]) <= 256 and len(embed["description"]) <= 4096
    assert all(len(f["value"]) <= 1024 for f in embed["fields"])


def test_discord_keeps_a_thread_id_when_editing() -> None:
    event = load_event("apply-failed")
    discord = providers.create("discord",
                               {"url": "https://discord.com/api/webhooks/1/t?thread_id=42"})
    assert discord.build(render(event), event).url == (
        "https://discord.com/api/webhooks/1/t?thread_id=42&wait=true")
    assert discord.build(render(event), event, "9").url == (
        "https://discord.com/api/webhooks/1/t/messages/9?thread_id=42")


@pytest.mark.parametrize(("url", "path"), [
    ("https://github.com/acme/deploy.git", "acme/deploy"),
    ("https://gitlab.example.com/g/sub/app/", "g/sub/app"),
    ("git@github.com:acme/deploy.git", "acme/deploy"),
    ("ssh://git@gitlab.example.com:2222/g/app.git", "g/app"),
    ("file:///srv/git/deploy", ""),
    ("/srv/git/deploy", ""),
    ("", ""),
])
def test_repo_path(url: str, path: str) -> None:
    assert repo_path(url) == path


def test_with_query() -> None:
    assert with_query("https://h/p", a="1") == "https://h/p?a=1"
    assert with_query("https://h/p?k=v", a="1") == "https://h/p?k=v&a=1"
