"""structlog set-up: readable on a terminal, JSON otherwise; secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEY = re.compile(r"(token|password|passwd|secret|authorization|private|credential)",
                         re.IGNORECASE)
MAX_FIELD = 4096  # characters of one logged value
# The lookbehind anchors a scheme at the start of a word: without it a long run of letters is
# tried from every position, quadratic in the length (seconds for a 2 MB value).
_URL_CREDENTIALS = re.compile(
    r"(?<![a-z0-9+.-])(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+(:[^/@\s]*)?@", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Strip ``user:password@`` from URLs inside a message."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def truncate(text: str, limit: int | None = None) -> str:
    """``text`` cut to ``limit`` characters with a marker saying how much was left out: one
    huge value (a request body, a tool's output) must not become one huge log line."""
    cap = MAX_FIELD if limit is None else limit
    if len(text) <= cap:
        return text
    return f"{text[:cap]}…[truncated {len(text) - cap} chars]"


def _bounded(text: str) -> str:
    """Redacted and truncated; the regex reads at most a little more than what is kept, and
    the cut comes after the redaction, so whatever is shown was redacted whole."""
    window = MAX_FIELD + 1024
    head = redact_text(text[:window])
    if len(text) <= window:
        return truncate(head)
    return f"{head[:MAX_FIELD]}…[truncated {len(text) - MAX_FIELD} chars]"


def redact_event(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if _SECRET_KEY.search(key):
            event_dict[key] = "***"
        elif isinstance(value, str):
            event_dict[key] = _bounded(value)
        elif isinstance(value, bytes | bytearray):
            event_dict[key] = truncate(repr(bytes(value[:MAX_FIELD + 1])))
    return event_dict


class TruncateRecords(logging.Filter):
    """The same bound for records of the standard library's loggers (aiohttp's among them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > MAX_FIELD:
            record.msg, record.args = _bounded(message), None
        return True


class CurrentStderr:
    """``sys.stderr`` as it is at each write. A logger holding the stream object it was built
    with writes to a closed file once a harness that swapped ``sys.stderr`` (pytest's capture,
    a program embedding Conveyor) puts it back; this one follows the swap."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(level: str = "info", json_logs: bool | None = None) -> None:
    as_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, stream=CurrentStderr(),
                        format="%(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, TruncateRecords) for f in handler.filters):
            handler.addFilter(TruncateRecords())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_event,
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if as_json
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    if as_json:
        processors.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
