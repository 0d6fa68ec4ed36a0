"""The error taxonomy: every failure Conveyor handles is one of these.

Adapters translate library errors (pygit2, aiohttp, nats, subprocess) into these at the
boundary, so handlers decide with one ``match`` instead of knowing every library:

- ``TransientError``: try again later (``nak(delay)`` across messages, tenacity inside adapters).
- ``PermanentError``: retrying cannot help; a person must act. Ends in a ``*.failed`` event.
- ``ConflictError``: an optimistic-concurrency check lost a race; re-read and retry at once.

Messages are written for people: what happened, where (file, line), and what to do.
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Root of every error Conveyor raises on purpose."""

    def __init__(self, message: str, *, reason: str = "Error") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def __str__(self) -> str:
        return self.message


class TransientError(ConveyorError):
    """A failure that may go away by itself; ``delay`` is a hint in seconds (e.g. Retry-After)."""

    def __init__(self, message: str, *, reason: str = "Transient", delay: float | None = None):
        super().__init__(message, reason=reason)
        self.delay = delay


class PermanentError(ConveyorError):
    """A failure retrying cannot fix: bad input, a refused credential, an invalid manifest."""


class ConflictError(TransientError):
    """Lost an optimistic-concurrency race (KV revision or expected subject sequence)."""

    def __init__(self, message: str, *, reason: str = "Conflict") -> None:
        super().__init__(message, reason=reason, delay=0.0)


class FencedError(TransientError):
    """A write by a lease holder that has been succeeded by another: refused, never retried by
    this holder (it stops acting when it sees the lease lost)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="Fenced", delay=5.0)


class ConfigError(PermanentError):
    """conveyor.yaml is unreadable or invalid; ``location`` is ``file:line`` when known."""

    def __init__(self, message: str, *, file: str, line: int | None = None,
                 field: str | None = None) -> None:
        where = f"{file}:{line}" if line else file
        text = f"{where}: {message}" if field is None else f"{where}: {field}: {message}"
        super().__init__(text, reason="InvalidConfig")
        self.file = file
        self.line = line
        self.field = field


class ManifestError(PermanentError):
    """A manifest failed to parse or validate; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str], *, reason: str = "InvalidManifest") -> None:
        super().__init__("; ".join(errors) if errors else "invalid manifests", reason=reason)
        self.errors = errors
