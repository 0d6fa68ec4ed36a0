"""Translate API-server answers into Conveyor's error taxonomy, in one place.

- 409 whose causes are ``FieldManagerConflict`` -> ``PermanentError`` (FieldManagerConflict):
  another manager owns the field, and only ``force=True`` or a person can settle that;
- any other 409 (object modified, already exists) -> ``ConflictError``: re-read and retry;
- 429 and 5xx -> ``TransientError`` with ``delay`` from ``Retry-After`` when sent;
- 400, 401, 403, 404, 405, 410, 415, 422 and other 4xx -> ``PermanentError`` carrying the
  Status ``message`` and ``reason``.

Messages quote the server's ``Status.message``; they never contain request headers.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import ConflictError, ConveyorError, PermanentError, TransientError


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the API server sends integers; dates ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)


def status_of(body: bytes) -> dict[str, Any]:
    """The ``Status`` object in an error body, or ``{}`` when it is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) and doc.get("kind") == "Status" else {}


def classify(code: int, body: bytes, *, method: str, path: str,
             retry_after: str | None = None) -> ConveyorError:
    status = status_of(body)
    reason = str(status.get("reason") or f"HTTP{code}")
    text = str(status.get("message") or body[:200].decode(errors="replace").strip()
               or f"HTTP {code}")
    message = f"{method} {path}: {text} ({code} {reason})"
    causes = (status.get("details") or {}).get("causes") or ()
    if code == 409:
        if any(c.get("reason") == "FieldManagerConflict" for c in causes):
            return PermanentError(message, reason="FieldManagerConflict")
        return ConflictError(message, reason=reason)
    if code == 429 or code >= 500:
        return TransientError(message, reason=reason, delay=parse_retry_after(retry_after))
    return PermanentError(message, reason=reason)
