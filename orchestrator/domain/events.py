"""Frozen, typed events with a CloudEvents 1.0 envelope.

Every step Conveyor takes is one of these, published to the JetStream log. The envelope uses
CloudEvents attribute names so any consumer can read it: ``id``, ``source``, ``type``,
``subject`` (the environment, or ``_`` for events about no single environment), ``time``,
``data``, ``dataschema`` (which payload version ``data`` is: ``orchestrator/domain/codec.py``;
absent on events written before payloads were typed), and the extensions ``correlationid``
(the source commit SHA a chain of events is about) and ``causationid`` (the id of the event
that caused this one).

Ids are derived from the cause, never random: the same input handled twice produces the same id,
which becomes the ``Nats-Msg-Id`` so JetStream drops the duplicate publish.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

import orjson

SPEC_VERSION: Final = "1.0"
PAYLOAD_VERSION: Final = 2  # of every payload class (orchestrator/domain/payloads.py)
SCHEMA_PREFIX: Final = "urn:conveyor:payload:"
NO_ENV: Final = "_"  # subject of events that concern no single environment

# -- event types: conveyor.<stage>.<outcome> --------------------------------------------------
COMMIT_DETECTED: Final = "conveyor.commit.detected"
COMMIT_REJECTED: Final = "conveyor.commit.rejected"
CONFIG_LOADED: Final = "conveyor.config.loaded"
CONFIG_INVALID: Final = "conveyor.config.invalid"
SOURCE_FETCH_FAILED: Final = "conveyor.source.fetch_failed"
SOURCE_RECOVERED: Final = "conveyor.source.recovered"
SOURCE_REWRITTEN: Final = "conveyor.source.rewritten"
SOURCE_BRANCH_DELETED: Final = "conveyor.source.branch_deleted"
REFRESH_REQUESTED: Final = "conveyor.refresh.requested"
ENV_REMOVED: Final = "conveyor.environment.removed"
ENV_PRUNED: Final = "conveyor.environment.pruned"
RENDER_SUCCEEDED: Final = "conveyor.render.succeeded"
RENDER_FAILED: Final = "conveyor.render.failed"
RENDER_DEAD: Final = "conveyor.render.dead"
APPLY_STARTED: Final = "conveyor.apply.started"
APPLY_SUCCEEDED: Final = "conveyor.apply.succeeded"
APPLY_FAILED: Final = "conveyor.apply.failed"
APPLY_SKIPPED: Final = "conveyor.apply.skipped"
APPLY_SUPERSEDED: Final = "conveyor.apply.superseded"
APPLY_RETRYING: Final = "conveyor.apply.retrying"
APPLY_DEAD: Final = "conveyor.apply.dead"
HEALTH_HEALTHY: Final = "conveyor.health.healthy"
HEALTH_DEGRADED: Final = "conveyor.health.degraded"
HEALTH_PROGRESSING: Final = "conveyor.health.progressing"
DRIFT_DETECTED: Final = "conveyor.drift.detected"
NOTIFY_SENT: Final = "conveyor.notify.sent"
NOTIFY_FAILED: Final = "conveyor.notify.failed"
NOTIFY_DEAD: Final = "conveyor.notify.dead"
LOG_RESET: Final = "conveyor.log.reset"  # a target was written under another log's epoch
# the GitOps workflow (orchestrator/gitops): each is about a commit Conveyor made or proposed
RELEASE_COMMITTED: Final = "conveyor.release.committed"
RELEASE_PROPOSED: Final = "conveyor.release.proposed"
ROLLBACK_COMMITTED: Final = "conveyor.rollback.committed"
ROLLBACK_PROPOSED: Final = "conveyor.rollback.proposed"
PROMOTION_REQUESTED: Final = "conveyor.promotion.requested"
PROMOTION_COMMITTED: Final = "conveyor.promotion.committed"
PROMOTION_PROPOSED: Final = "conveyor.promotion.proposed"
PROMOTION_REFUSED: Final = "conveyor.promotion.refused"
PREVIEW_RENDERED: Final = "conveyor.preview.rendered"
PREVIEW_POSTED: Final = "conveyor.preview.posted"
PREVIEW_FAILED: Final = "conveyor.preview.failed"

KNOWN_TYPES: Final = frozenset(
    v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, str)
    and v.startswith("conveyor.")
)

# Outcomes that end an environment's handling of a commit: notifications go out for these.
TERMINAL_TYPES: Final = frozenset({
    RENDER_FAILED, RENDER_DEAD, APPLY_SUCCEEDED, APPLY_FAILED, APPLY_SKIPPED,
    APPLY_SUPERSEDED, APPLY_DEAD, COMMIT_REJECTED, CONFIG_INVALID,
    SOURCE_FETCH_FAILED, SOURCE_RECOVERED, SOURCE_REWRITTEN, HEALTH_DEGRADED,
    DRIFT_DETECTED,
})


def stage_of(event_type: str) -> str:
    """``conveyor.apply.failed`` -> ``apply``."""
    return event_type.split(".")[1]


def outcome_of(event_type: str) -> str:
    """``conveyor.apply.failed`` -> ``failed``."""
    return event_type.split(".", 2)[2]


def schema_for(event_type: str, version: int = PAYLOAD_VERSION) -> str:
    """The ``dataschema`` of an event type's payload at ``version``."""
    return f"{SCHEMA_PREFIX}{event_type}:v{version}"


def derive_id(*parts: str) -> str:
    """A deterministic event id: the same parts always give the same id (idempotent publish)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return digest[:32]


def outcome_id(stage: str, env: str, cause_id: str) -> str:
    """The one id every outcome of a stage's input shares (``succeeded``, ``failed``,
    ``superseded``, ``dead``...): whichever is published first is the only one in the log."""
    return derive_id(f"conveyor.{stage}.outcome", env, cause_id)


def loads(payload: bytes | str) -> Any:
    """JSON text as Python values: orjson (three times the standard library's speed, and every
    event of the log is parsed), or the standard library for what orjson refuses and it reads
    (``NaN``, integers past 64 bits): the same values either way."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Event:
    """One fact in the log. ``data`` must be JSON-serialisable and never hold a secret."""

    type: str
    subject: str
    data: dict[str, Any]
    id: str
    correlationid: str = ""
    causationid: str = ""
    source: str = "conveyor"
    time: str = field(default_factory=_now)
    specversion: str = SPEC_VERSION
    datacontenttype: str = "application/json"
    dataschema: str = ""  # "" = payload version 1 (written before payloads were typed)

    @property
    def env(self) -> str:
        return self.subject

    @property
    def stage(self) -> str:
        return stage_of(self.type)

    @property
    def outcome(self) -> str:
        return outcome_of(self.type)

    def to_dict(self) -> dict[str, Any]:
        schema = {"dataschema": self.dataschema} if self.dataschema else {}
        return {
            **schema,
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
            "correlationid": self.correlationid,
            "causationid": self.causationid,
            "data": self.data,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Event:
        return cls(
            type=str(raw["type"]),
            subject=str(raw.get("subject", NO_ENV)),
            data=dict(raw.get("data") or {}),
            id=str(raw["id"]),
            correlationid=str(raw.get("correlationid", "")),
            causationid=str(raw.get("causationid", "")),
            source=str(raw.get("source", "conveyor")),
            time=str(raw.get("time", "")),
            specversion=str(raw.get("specversion", SPEC_VERSION)),
            datacontenttype=str(raw.get("datacontenttype", "application/json")),
            dataschema=str(raw.get("dataschema", "")),
        )

    @classmethod
    def from_json(cls, payload: bytes) -> Event:
        return cls.from_dict(loads(payload))

    def with_time(self, time: str) -> Event:
        return replace(self, time=time)


def new_event(
    type: str,
    *,
    env: str,
    data: dict[str, Any],
    cause: Event | None = None,
    correlation: str | None = None,
    source: str = "conveyor",
    key: str = "",
) -> Event:
    """Build an event whose id derives from its cause (or from ``key`` when it has none).

    ``key`` tells apart several events of one type caused by the same event (one per route,
    one per attempt). Correlation is inherited from the cause unless given.
    """
    causation = cause.id if cause is not None else ""
    corr = correlation if correlation is not None else (cause.correlationid if cause else "")
    return Event(
        type=type,
        subject=env,
        data=data,
        id=derive_id(type, env, causation, corr, key),
        correlationid=corr,
        causationid=causation,
        source=source,
        dataschema=schema_for(type),  # writers write the current version of every payload
    )


TRUNCATED = "… [truncated {} bytes]"


def _longest(value: Any, path: tuple[str | int, ...]) -> tuple[int, tuple[str | int, ...]]:
    """The length and path of the longest string (or list) under ``value``."""
    best: tuple[int, tuple[str | int, ...]] = (0, ())
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            size = len(item.encode())
        elif isinstance(item, list):
            size = len(item) * 16  # a long list weighs like a long string
            stack.extend((v, (*where, i)) for i, v in enumerate(item))
        elif isinstance(item, dict):
            stack.extend((v, (*where, str(k))) for k, v in item.items())
            continue
        else:
            continue
        if size > best[0]:
            best = (size, where)
    return best


def _shrunk(value: Any, where: tuple[str | int, ...], half: bool) -> Any:
    if not where:
        if isinstance(value, str):
            raw = value.encode()
            keep = max(64, len(raw) // 4) if half else 64
            cut = raw[:keep].decode(errors="ignore")
            return cut + TRUNCATED.format(len(raw) - len(cut.encode()))
        if isinstance(value, list):
            keep = max(8, len(value) // 4) if half else 8
            return [*value[:keep], TRUNCATED.format(f"{len(value) - keep} items, their")]
        return value
    head, rest = where[0], where[1:]
    if isinstance(value, dict):
        return {k: _shrunk(v, rest, half) if k == head else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(head, int):
        return [_shrunk(v, rest, half) if i == head else v for i, v in enumerate(value)]
    return value


def fit(event: Event, limit: int) -> Event:
    """``event`` small enough to publish (``limit`` bytes): the largest strings and lists of
    its data are cut, each with a marker saying how much, and ``data.truncated`` lists them.

    One commit with a 1.2 MB subject must not stall the log: the event goes out, smaller, and
    the next commit flows. The id stays, so a redelivery still dedupes."""
    if len(event.to_json()) <= limit:
        return event
    data = dict(event.data)
    cut: list[str] = []
    for _ in range(200):
        size, where = _longest(data, ())
        if not where or size <= 64:
            break
        dotted = ".".join(str(p) for p in where)
        data = _shrunk(data, where, half=dotted not in cut)
        if dotted not in cut:
            cut.append(dotted)
        candidate = replace(event, data={**data, "truncated": cut})
        if len(candidate.to_json()) <= limit:
            return candidate
    keep = {k: v for k, v in data.items() if isinstance(v, int | float | bool) or (
        isinstance(v, str) and len(v) <= 200)}
    return replace(event, data={**keep, "truncated": ["*"]})
