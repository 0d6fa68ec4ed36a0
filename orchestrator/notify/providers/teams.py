"""Microsoft Teams through a Workflows (Power Automate) webhook, with an Adaptive Card 1.4.

The Office 365 connector ``MessageCard`` format is retired; Workflows' "Send webhook alerts to a
channel" template expects a message activity carrying one Adaptive Card attachment. The webhook
answers 202 Accepted and gives no message id, so Teams messages are never updated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from orchestrator.domain.events import Event
from orchestrator.notify.message import Answer, Message, Request, Response, json_request, read_http
from orchestrator.notify.providers.base import http_url

CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
# Adaptive Card TextBlock colours by tone.
_COLORS = MappingProxyType({"success": "Good", "failure": "Attention", "warning": "Warning",
           "pending": "Accent", "neutral": "Default"})


def card(message: Message) -> dict[str, Any]:
    """The Adaptive Card: title, text, a fact set, and an "Open" action when there is a link."""
    body: list[dict[str, Any]] = [{
        "type": "TextBlock", "text": message.summary, "weight": "Bolder", "size": "Medium",
        "color": _COLORS[message.tone], "wrap": True,
    }]
    if message.text.strip():
        body.append({"type": "TextBlock", "text": message.text, "wrap": True})
    if message.fields:
        body.append({"type": "FactSet", "facts": [
            {"title": f.name, "value": f.value} for f in message.fields
        ]})
    content: dict[str, Any] = {
        "type": "AdaptiveCard", "$schema": CARD_SCHEMA, "version": "1.4", "body": body,
        "msteams": {"width": "Full"},
    }
    if message.link:
        content["actions"] = [{"type": "Action.OpenUrl", "title": "Open", "url": message.link}]
    return content


@dataclass(frozen=True, slots=True)
class Teams:
    url: str
    kind: ClassVar[str] = "teams"
    updates: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = "") -> Teams:
        return cls(url=http_url(settings, "url", "teams", name=name))

    def build(self, message: Message, event: Event, ref: str | None = None) -> Request:
        return json_request("POST", self.url, {
            "type": "message",
            "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None,
                             "content": card(message)}],
        })

    def read(self, response: Response, *, ref: str | None = None,
             now: float | None = None) -> Answer:
        return read_http(response, now=now)
