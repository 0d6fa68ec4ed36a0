"""Mattermost: an incoming webhook with one Slack-compatible message attachment.

``fallback`` is required by Mattermost and shows in notifications. The webhook answers ``ok``
and returns no post id, so messages are not updated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from orchestrator.domain.events import Event
from orchestrator.notify.message import Answer, Message, Request, Response, json_request, read_http
from orchestrator.notify.providers.base import http_url, optional


@dataclass(frozen=True, slots=True)
class Mattermost:
    url: str
    channel: str = ""
    username: str = ""
    icon_url: str = ""
    kind: ClassVar[str] = "mattermost"
    updates: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = "") -> Mattermost:
        return cls(url=http_url(settings, "url", "mattermost", name=name),
                   channel=optional(settings, "channel"),
                   username=optional(settings, "username"),
                   icon_url=optional(settings, "iconUrl"))

    def build(self, message: Message, event: Event, ref: str | None = None) -> Request:
        attachment: dict[str, Any] = {
            "fallback": message.summary,
            "color": message.color,
            "title": message.summary,
            "text": message.text,
            "fields": [{"short": True, "title": f.name, "value": f.value}
                       for f in message.fields],
            "footer": f"conveyor \u00b7 {message.outcome}",
        }
        if message.link:
            attachment["title_link"] = message.link
        payload: dict[str, Any] = {"attachments": [attachment]}
        for key, value in (("channel", self.channel), ("username", self.username),
                           ("icon_url", self.icon_url)):
            if value:
                payload[key] = value
        return json_request("POST", self.url, payload)

    def read(self, response: Response, *, ref: str | None = None,
             now: float | None = None) -> Answer:
        return read_http(response, now=now)
