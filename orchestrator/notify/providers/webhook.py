"""A generic webhook: the event itself, in CloudEvents HTTP structured content mode.

The body is the event's canonical JSON (``Event.to_json``, the same bytes the log holds) with
``Content-Type: application/cloudevents+json``. With a ``secret`` the request carries
``X-Conveyor-Signature: sha256=<hex HMAC-SHA256 of the body>`` so the receiver can check it
came from Conveyor (compare with ``hmac.compare_digest``). The event ``id`` is stable across
redeliveries, so receivers can deduplicate on it (CloudEvents: the same ``source`` and ``id``
is the same event). A send that repeats an attempt which may have reached the receiver (the
notifier was killed after sending, before it recorded the answer) carries
``X-Conveyor-Redelivery: 1``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from orchestrator.domain.events import Event
from orchestrator.notify.message import Answer, Message, Request, Response, read_http
from orchestrator.notify.providers.base import config_error, http_url, optional

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
SIGNATURE_HEADER = "X-Conveyor-Signature"
REDELIVERY_HEADER = "X-Conveyor-Redelivery"
METHODS = ("POST", "PUT")


def signature(secret: str, body: bytes) -> str:
    """The ``X-Conveyor-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: str = ""
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    kind: ClassVar[str] = "webhook"
    updates: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = "") -> Webhook:
        method = optional(settings, "method", "POST").upper()
        if method not in METHODS:
            raise config_error(f"method must be one of {', '.join(METHODS)}", "method",
                               name=name)
        raw_headers = settings.get("headers") or {}
        if not isinstance(raw_headers, Mapping):
            raise config_error("headers must be a mapping of name to value", "headers",
                               name=name)
        return cls(url=http_url(settings, "url", "webhook", name=name),
                   secret=optional(settings, "secret"), method=method,
                   headers={str(k): str(v) for k, v in raw_headers.items()})

    def build(self, message: Message, event: Event, ref: str | None = None) -> Request:
        body = event.to_json()
        headers = {**self.headers, "Content-Type": CONTENT_TYPE}
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        return Request(self.method, self.url, headers, body)

    def read(self, response: Response, *, ref: str | None = None,
             now: float | None = None) -> Answer:
        return read_http(response, now=now)
