"""Google Chat: a space webhook posting a ``cardsV2`` card (or plain ``text``), threaded.

Webhook messages cannot be edited, but they can reply in a thread: every event of one
deployment carries the same ``thread.threadKey`` and the URL asks for
``messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD``, so a deployment reads as one
thread. The first message names the thread by a key derived from the deployment; the reference
returned is the thread's resource name (``spaces/.../threads/...``), which later messages use.
Card text widgets accept a little HTML, so text is HTML-escaped.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from orchestrator.domain.events import Event
from orchestrator.notify.message import Answer, Message, Request, Response, json_request, read_http
from orchestrator.notify.providers.base import config_error, http_url, optional, with_query

REPLY_OPTION = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
STYLES = ("card", "text")


def thread_key(deployment_key: str) -> str:
    """A short stable thread key for a deployment (correlation + environment)."""
    return "conveyor-" + hashlib.sha256(deployment_key.encode()).hexdigest()[:32]


def card(message: Message) -> dict[str, Any]:
    widgets: list[dict[str, Any]] = []
    if message.text.strip():
        widgets.append({"textParagraph": {
            "text": html.escape(message.text, quote=False).replace("\n", "<br>"),
        }})
    widgets.extend({"decoratedText": {"topLabel": html.escape(f.name, quote=False),
                                      "text": html.escape(f.value, quote=False)}}
                   for f in message.fields)
    if message.link:
        widgets.append({"buttonList": {"buttons": [
            {"text": "Open", "onClick": {"openLink": {"url": message.link}}},
        ]}})
    return {
        "cardId": "conveyor",
        "card": {
            "header": {"title": message.summary,
                       "subtitle": f"{message.outcome} \u00b7 {message.severity.label}"},
            "sections": [{"widgets": widgets}] if widgets else [],
        },
    }


@dataclass(frozen=True, slots=True)
class GoogleChat:
    url: str
    style: str = "card"
    kind: ClassVar[str] = "googlechat"
    updates: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = "") -> GoogleChat:
        style = optional(settings, "style", "card")
        if style not in STYLES:
            raise config_error(f"style must be one of {', '.join(STYLES)}", "style", name=name)
        return cls(url=http_url(settings, "url", "googlechat", name=name), style=style)

    def build(self, message: Message, event: Event, ref: str | None = None) -> Request:
        payload: dict[str, Any]
        if self.style == "text":
            lines = [f"*{message.summary}*", message.text]
            if message.fields:
                lines.append("\n".join(f"{f.name}: {f.value}" for f in message.fields))
            if message.link:
                lines.append(message.link)
            payload = {"text": "\n".join(line for line in lines if line.strip())}
        else:
            payload = {"text": message.summary, "cardsV2": [card(message)]}
        url = self.url
        if ref or message.key:
            payload["thread"] = {"name": ref} if ref else {"threadKey": thread_key(message.key)}
            url = with_query(url, messageReplyOption=REPLY_OPTION)
        return json_request("POST", url, payload, content_type="application/json; charset=UTF-8")

    def read(self, response: Response, *, ref: str | None = None,
             now: float | None = None) -> Answer:
        answer = read_http(response, now=now)
        if not answer.ok:
            return answer
        body = response.json()
        thread = body.get("thread") if isinstance(body, dict) else None
        name = thread.get("name") if isinstance(thread, dict) else None
        return Answer(ok=True, detail="ok", message_ref=str(name) if name else ref)
