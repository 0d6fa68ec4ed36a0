"""What every provider is: a pure ``build`` and a pure ``read``; helpers they share.

A provider never does I/O. ``build(message, event, ref)`` returns the exact ``Request`` to send
(``ref`` is the provider's reference to a message posted earlier for the same deployment, to
update or thread under); ``read(response)`` says whether it was delivered and returns the new
reference. The sender owns the HTTP client, retries and timeouts.

Providers are built from *expanded* settings (``${VAR}`` already substituted), so a provider
object holds secrets: never log it, and never put its URL or token in an error message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from orchestrator.domain.config import CONFIG_FILE
from orchestrator.domain.events import NO_ENV, Event
from orchestrator.errors import ConfigError
from orchestrator.notify.message import Answer, Message, Request, Response


class Provider(Protocol):
    """One chat product or API. Implementations are frozen dataclasses."""

    kind: ClassVar[str]
    updates: ClassVar[bool]
    """True when a later event edits (or threads under) the message an earlier one posted."""

    def build(self, message: Message, event: Event, ref: str | None = None) -> Request:
        """The request that posts ``message`` (or updates the message ``ref`` names)."""
        ...

    def read(self, response: Response, *, ref: str | None = None,
             now: float | None = None) -> Answer:
        """Delivered or not, retry or not, and the reference to the posted message."""
        ...


def setting(settings: Mapping[str, Any], key: str, kind: str, *, name: str = "",
            default: str | None = None) -> str:
    """A required (or defaulted) non-empty string setting; ``ConfigError`` names the field."""
    value = settings.get(key, default)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise config_error(f"{kind} notifier needs {key!r}", key, name=name)
    if not isinstance(value, str | int):
        raise config_error(f"{key!r} must be a string", key, name=name)
    return str(value).strip()


def optional(settings: Mapping[str, Any], key: str, default: str = "") -> str:
    value = settings.get(key)
    return default if value is None else str(value).strip()


def http_url(settings: Mapping[str, Any], key: str, kind: str, *, name: str = "",
             default: str | None = None) -> str:
    """A required http(s) URL. The message never quotes the URL: webhook URLs are secrets."""
    url = setting(settings, key, kind, name=name, default=default)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise config_error(f"{key!r} must be an http(s) URL", key, name=name)
    return url


def config_error(message: str, key: str, *, name: str = "") -> ConfigError:
    field = f"notifiers.{name}.{key}" if name else key
    return ConfigError(message, file=CONFIG_FILE, field=field)


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` appended to its query (values must be URL-safe already)."""
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    if not extra:
        return url
    base, sep, fragment = url.partition("#")
    joined = f"{base}&{extra}" if "?" in base else f"{base}?{extra}"
    return f"{joined}{sep}{fragment}"


def commit_sha(event: Event) -> str:
    """The commit an event is about: its correlation, else ``data.revision``."""
    return event.correlationid or str(event.data.get("revision") or "")


def status_description(message: Message, event: Event, limit: int) -> str:
    """A commit status line: the title, or what failed and why when the event has an error."""
    error = str(event.data.get("error") or "").strip().splitlines()
    if error:
        text = f"{event.stage} {event.outcome.replace('_', ' ')}: {error[0]}"
    else:
        text = message.title
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def status_context(event: Event, prefix: str = "conveyor") -> str:
    """``conveyor/<env>``, or ``conveyor`` for events about no single environment."""
    return prefix if event.subject in ("", NO_ENV) else f"{prefix}/{event.subject}"


def repo_path(repo_url: str) -> str:
    """``https://github.com/acme/app.git``, ``ssh://git@host:22/acme/app`` or
    ``git@github.com:acme/app`` -> ``acme/app``; ``""`` for a local path."""
    url = repo_url.strip()
    if "://" in url:
        parts = urlsplit(url)
        path = parts.path if parts.netloc and parts.scheme != "file" else ""
    elif re.match(r"^[^/@:]+@[^/:]+:", url):  # scp-like: user@host:path
        path = url.split(":", 1)[1]
    else:
        path = ""
    return path.strip("/").removesuffix(".git")
