"""Slack: an incoming webhook, or a bot token with ``chat.postMessage`` / ``chat.update``.

Both send the same Block Kit layout (header, text, fields, a link button, a context line) with a
top-level ``text`` that Slack uses for notifications. Text is escaped for mrkdwn (``&``, ``<``,
``>``) so a commit message cannot inject links or mentions.

The Web API answers HTTP 200 with ``{"ok": false, "error": ...}`` for most failures: that is a
failed delivery, never a success. ``ratelimited`` comes as HTTP 429 with ``Retry-After``.
With a bot token the first event of a deployment posts, later ones ``chat.update`` the same
message; the reference is ``<channel id>:<ts>`` (``chat.update`` needs the channel *id* that
``chat.postMessage`` returns, not the ``#name`` configured).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from orchestrator.domain.events import Event
from orchestrator.notify.message import (
    Answer,
    Message,
    Request,
    Response,
    clip,
    json_request,
    read_http,
    retry_after_seconds,
)
from orchestrator.notify.providers.base import http_url, setting

DEFAULT_API = "https://slack.com/api"
# Web API errors that may go away by themselves; every other error needs a person.
RETRYABLE_ERRORS = frozenset({
    "ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout",
})
# chat.update errors meaning "that message cannot be edited": post a new one instead.
STALE_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})


def escape(text: str) -> str:
    """Slack's three control characters, escaped as its docs require."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def blocks(message: Message) -> list[dict[str, Any]]:
    """The Block Kit layout shared by the webhook and the bot."""
    out: list[dict[str, Any]] = [{
        "type": "header",
        "text": {"type": "plain_text", "text": clip(message.summary, 150), "emoji": True},
    }]
    if message.text.strip():
        out.append({"type": "section",
                    "text": {"type": "mrkdwn", "text": clip(escape(message.text), 3000)}})
    if message.fields:
        out.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": clip(f"*{escape(f.name)}*\n{escape(f.value)}", 2000)}
            for f in message.fields[:10]
        ]})
    if message.link:
        out.append({"type": "actions", "elements": [{
            "type": "button", "text": {"type": "plain_text", "text": "Open"},
            "url": message.link,
        }]})
    out.append({"type": "context", "elements": [{
        "type": "mrkdwn",
        "text": escape(f"conveyor \u00b7 {message.outcome} \u00b7 {message.severity.label}"),
    }]})
    return out


@dataclass(frozen=True, slots=True)
class SlackWebhook:
    """An incoming webhook URL (``https://hooks.slack.com/services/...``); answers ``ok``."""

    url: str
    kind: ClassVar[str] = "slack"
    updates: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = "") -> SlackWebhook:
        return cls(url=http_url(settings, "url", "slack", name=name))

    def build(self, message: Message, event: Event, ref: str | None = None) -> Request:
        return json_request("POST", self.url,
                            {"text": escape(message.summary), "blocks": blocks(message)})

    def read(self, response: Response, *, ref: str | None = None,
             now: float | None = None) -> Answer:
        return read_http(response, now=now)


@dataclass(frozen=True, slots=True)
class SlackBot:
    """A bot token (``xoxb-...``) posting to ``channel`` through the Web API at ``api``."""

    token: str
    channel: str
    api: str = DEFAULT_API
    kind: ClassVar[str] = "slack"
    updates: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = "") -> SlackBot:
        return cls(
            token=setting(settings, "token", "slack", name=name),
            channel=setting(settings, "channel", "slack", name=name),
            api=http_url(settings, "api", "slack", name=name, default=DEFAULT_API).rstrip("/"),
        )

    def build(self, message: Message, event: Event, ref: str | None = None) -> Request:
        headers = {"Authorization": f"Bearer {self.token}"}
        payload: dict[str, Any] = {
            "text": escape(message.summary),
            "blocks": blocks(message),
        }
        if ref:
            channel, _, ts = ref.partition(":")
            return json_request("POST", f"{self.api}/chat.update",
                                {"channel": channel, "ts": ts, **payload}, headers=headers)
        return json_request("POST", f"{self.api}/chat.postMessage",
                            {"channel": self.channel, **payload,
                             "unfurl_links": False, "unfurl_media": False},
                            headers=headers)

    def read(self, response: Response, *, ref: str | None = None,
             now: float | None = None) -> Answer:
        if response.status != 200:
            return read_http(response, now=now)
        body = response.json()
        if not isinstance(body, dict):
            return Answer(ok=False, detail="Slack answered HTTP 200 without a JSON body")
        if body.get("ok") is True:
            channel, ts = str(body.get("channel", "")), str(body.get("ts", ""))
            return Answer(ok=True, detail="ok",
                          message_ref=f"{channel}:{ts}" if channel and ts else ref)
        error = str(body.get("error") or "unknown_error")
        return Answer(
            ok=False,
            detail=f"Slack refused the message: {error}",
            retryable=error in RETRYABLE_ERRORS,
            retry_after=retry_after_seconds(response, now=now),
            stale_ref=bool(ref) and error in STALE_ERRORS,
        )


def from_settings(settings: Mapping[str, Any], name: str = "") -> SlackWebhook | SlackBot:
    """A bot when ``token`` is set, otherwise an incoming webhook (``url``)."""
    if settings.get("token"):
        return SlackBot.from_settings(settings, name)
    return SlackWebhook.from_settings(settings, name)
