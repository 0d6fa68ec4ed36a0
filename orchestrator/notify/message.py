"""The provider-neutral values notification code passes around; pure, no I/O.

- ``Message``: what a person should read, rendered once per (route, event) and then laid out by
  each provider in its own format (Block Kit, Adaptive Card, embed, card, attachment).
- ``Request``: the exact HTTP request a provider wants sent. The body is bytes so a signature
  (the generic webhook's HMAC) covers exactly what goes on the wire.
- ``Response`` / ``Answer``: what came back, and the provider's reading of it. HTTP 200 does not
  mean delivered (Slack's Web API answers ``{"ok": false}`` with 200), so only ``Answer.ok``
  decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import IntEnum
from types import MappingProxyType
from typing import Any, Literal

Tone = Literal["success", "failure", "warning", "pending", "neutral"]
"""How the outcome should look: drives colours and icons, not routing."""

COLORS: Mapping[Tone, str] = MappingProxyType({
    "success": "#2EB67D",
    "failure": "#E01E5A",
    "warning": "#ECB22E",
    "pending": "#1D9BD1",
    "neutral": "#9E9E9E",
})

ICONS: Mapping[Tone, str] = MappingProxyType({
    "success": "\u2705",  # check mark
    "failure": "\u274c",  # cross
    "warning": "\u26a0\ufe0f",  # warning sign
    "pending": "\u23f3",  # hourglass
    "neutral": "\u2139\ufe0f",  # information
})


class Severity(IntEnum):
    """Ordered: a route with minimum ``warning`` receives ``warning`` and ``error``."""

    INFO = 10
    WARNING = 20
    ERROR = 30

    @classmethod
    def parse(cls, text: str) -> Severity:
        """``"warning"`` -> ``Severity.WARNING``; raises ``ValueError`` naming the choices."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown severity {text!r} (expected one of {choices})") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class MessageField:
    """One short labelled value (``Environment: prod``); providers lay these out as columns."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Message:
    """A rendered notification, independent of any chat product.

    ``text`` is plain text with line breaks (no product-specific markup), so every provider can
    escape it for its own format. ``key`` identifies the deployment the message is about
    (correlation + environment): providers that thread or update use it.
    """

    title: str
    text: str
    severity: Severity
    tone: Tone
    outcome: str
    fields: tuple[MessageField, ...] = ()
    link: str = ""
    key: str = ""
    template_error: str = ""

    @property
    def color(self) -> str:
        return COLORS[self.tone]

    @property
    def icon(self) -> str:
        return ICONS[self.tone]

    @property
    def summary(self) -> str:
        """One line for notification previews and fallbacks."""
        return f"{self.icon} {self.title}"


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request, exactly as it should be sent. ``url`` is already percent-encoded."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON (for tests and logs)."""
        return json.loads(self.body)


def json_request(method: str, url: str, payload: Any, *,
                 headers: Mapping[str, str] | None = None,
                 content_type: str = "application/json; charset=utf-8") -> Request:
    """A request with a compact JSON body and its ``Content-Type``."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Request(method, url, {"Content-Type": content_type, **(headers or {})}, body)


@dataclass(frozen=True, slots=True)
class Response:
    """What the receiver answered; headers with lower-case names."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or ``None`` when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's reading of a response.

    ``retryable`` failures may succeed later (``retry_after`` seconds from now when the receiver
    said so); the others need a person. ``stale_ref`` means the message to update is gone or can
    no longer be edited: the sender posts a new message instead.
    """

    ok: bool
    detail: str = ""
    retryable: bool = False
    retry_after: float | None = None
    message_ref: str | None = None
    stale_ref: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


def retry_after_seconds(response: Response, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or HTTP-date) or a JSON body's
    ``retry_after`` (Discord sends fractional seconds there); ``None`` when neither is given.

    An HTTP-date needs ``now`` (a Unix time) to become a delay; without it, it is ignored.
    """
    header = response.headers.get("retry-after", "").strip()
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        if now is not None:
            try:
                return max(0.0, parsedate_to_datetime(header).timestamp() - now)
            except (TypeError, ValueError):
                pass
    body = response.json()
    if isinstance(body, dict):
        value = body.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return max(0.0, float(value))
    return None


def read_http(response: Response, *, now: float | None = None) -> Answer:
    """The common reading of an HTTP answer, which most providers use as is.

    2xx delivered; 408, 425, 429 and 5xx may succeed later; other 4xx will not (a wrong URL, a
    revoked token or a payload the receiver refuses needs a person).
    """
    status = response.status
    detail = f"HTTP {status}: {clip(response.text.strip(), 300)}".rstrip(": ")
    if 200 <= status < 300:
        return Answer(ok=True, detail=detail)
    retryable = status in (408, 425, 429) or status >= 500
    return Answer(ok=False, detail=detail, retryable=retryable,
                  retry_after=retry_after_seconds(response, now=now) if retryable else None)


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "\u2026"
