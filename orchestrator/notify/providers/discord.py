"""Discord: a channel webhook with one embed; later events edit the same message.

Posting with ``?wait=true`` makes Discord answer with the created message, whose ``id`` is the
reference; an edit is ``PATCH {webhook}/messages/{id}``. ``allowed_mentions`` is empty so a
commit message saying ``@everyone`` pings nobody. Rate limits come as 429 with a JSON body whose
``retry_after`` is in (fractional) seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from orchestrator.domain.events import Event
from orchestrator.notify.message import (
    Answer,
    Message,
    Request,
    Response,
    clip,
    json_request,
    read_http,
)
from orchestrator.notify.providers.base import http_url, optional, with_query

UNKNOWN_MESSAGE = 10008  # Discord JSON error code: the message to edit is gone


def embed(message: Message, event: Event) -> dict[str, Any]:
    """One embed within Discord's limits (title 256, description 4096, 25 fields)."""
    out: dict[str, Any] = {
        "title": clip(message.summary, 256),
        "description": clip(message.text, 4096),
        "color": int(message.color.lstrip("#"), 16),
        "fields": [
            {"name": clip(f.name, 256), "value": clip(f.value or "-", 1024), "inline": True}
            for f in message.fields[:25]
        ],
        "footer": {"text": f"conveyor \u00b7 {message.outcome}"},
    }
    if message.link:
        out["url"] = message.link
    if event.time:
        out["timestamp"] = event.time
    return out


@dataclass(frozen=True, slots=True)
class Discord:
    url: str
    username: str = ""
    kind: ClassVar[str] = "discord"
    updates: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = "") -> Discord:
        return cls(url=http_url(settings, "url", "discord", name=name),
                   username=optional(settings, "username"))

    def build(self, message: Message, event: Event, ref: str | None = None) -> Request:
        payload: dict[str, Any] = {
            "embeds": [embed(message, event)],
            "allowed_mentions": {"parse": []},
        }
        if ref:
            return json_request("PATCH", self._message_url(ref), payload)
        if self.username:
            payload["username"] = self.username
        return json_request("POST", with_query(self.url, wait="true"), payload)

    def _message_url(self, message_id: str) -> str:
        """``{webhook}/messages/{id}``, keeping a ``thread_id`` query the webhook URL has."""
        parts = urlsplit(self.url)
        path = f"{parts.path.rstrip('/')}/messages/{message_id}"
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    def read(self, response: Response, *, ref: str | None = None,
             now: float | None = None) -> Answer:
        answer = read_http(response, now=now)
        body = response.json()
        if answer.ok:
            message_id = body.get("id") if isinstance(body, dict) else None
            return Answer(ok=True, detail="ok",
                          message_ref=str(message_id) if message_id else ref)
        stale = (bool(ref) and response.status == 404 and isinstance(body, dict)
                 and body.get("code") == UNKNOWN_MESSAGE)
        return Answer(ok=False, detail=answer.detail, retryable=answer.retryable,
                      retry_after=answer.retry_after, stale_ref=stale)
