"""What a handler returns, and the one mapping of its errors to outcomes.

A handler gets a ``Delivery`` and returns an ``Outcome`` (``Ack``, ``Retry`` or ``Fail``, each
with the events to publish first); ``orchestrator/runtime.py`` acts on it. An exception that
escapes a handler is mapped here, and only here (``outcome_for_error``):

- ``PermanentError`` (``ConfigError``, ``ManifestError``...): ``Fail`` with a
  ``conveyor.<stage>.dead`` event carrying the error's words (``reason``), its reason code
  (``code``) and the original event, which ``conveyor retry`` can hand back;
- ``TransientError``: ``Retry`` after its ``delay``, else exponential ``backoff``;
- anything else (a bug, maybe a passing one): ``Retry`` with backoff, bounded by the
  consumer's ``max_deliver``, after which the runtime writes the dead letter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from orchestrator.domain.events import Event, new_event
from orchestrator.errors import PermanentError, TransientError

RUNTIME_SOURCE = "conveyor/runtime"
MAX_BACKOFF = 60.0
SILENT_FAIL = "the handler ended the message without an outcome event"


@dataclass(frozen=True, slots=True)
class Delivery:
    event: Event
    seq: int  # stream sequence of this event
    attempt: int  # 1 on first delivery


@dataclass(frozen=True, slots=True)
class Ack:
    emit: Sequence[Event] = ()


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float
    reason: str
    emit: Sequence[Event] = ()


@dataclass(frozen=True, slots=True)
class Fail:
    emit: Sequence[Event] = ()


Outcome = Ack | Retry | Fail
Handler = Callable[[Delivery], Awaitable[Outcome]]
Superseder = Callable[[Delivery, Delivery], Awaitable[Sequence[Event]]]


def backoff(attempt: int) -> float:
    return min(MAX_BACKOFF, 2.0 ** attempt)


def dead_event(stage: str, consumer: str, delivery: Delivery, reason: str,
               **extra: object) -> Event:
    """``conveyor.<stage>.dead``: the message ended without the handler's outcome; ``reason``
    in words, the original event so ``conveyor retry`` can hand it back."""
    return new_event(
        f"conveyor.{stage}.dead", env=delivery.event.subject, cause=delivery.event,
        source=RUNTIME_SOURCE,
        data={"reason": reason, "attempts": delivery.attempt,
              "original": delivery.event.to_dict(), "consumer": consumer, **extra})


def outcome_for_error(exc: Exception, delivery: Delivery, *, stage: str,
                      consumer: str) -> Outcome:
    """The one mapping of an exception that escaped a handler to an outcome."""
    if isinstance(exc, PermanentError):
        return Fail((dead_event(stage, consumer, delivery, str(exc), code=exc.reason),))
    if isinstance(exc, TransientError):
        delay = exc.delay if exc.delay is not None else backoff(delivery.attempt)
        return Retry(delay, reason=f"{exc.reason}: {exc}")
    return Retry(backoff(delivery.attempt), reason=f"handler error: {exc}")
