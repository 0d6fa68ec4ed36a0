"""A commit's trace: its events as a causal tree with each hop's latency. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from orchestrator.domain.codec import decode
from orchestrator.domain.events import Event


def parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def latency_ms(cause: Event, effect: Event) -> float | None:
    a, b = parse_time(cause.time), parse_time(effect.time)
    if a is None or b is None:
        return None
    return round((b - a).total_seconds() * 1000, 1)


@dataclass
class TraceNode:
    event: Event
    latency_ms: float | None
    children: list[TraceNode] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"id": self.event.id, "type": self.event.type, "env": self.event.subject,
                "time": self.event.time, "latency_ms": self.latency_ms,
                "summary": summary(self.event),
                "children": [c.to_dict() for c in self.children]}


def summary(event: Event) -> str:
    """One line saying what the event tells: its payload's own description."""
    return decode(event).describe()


def build_trace(events: Sequence[Event]) -> list[TraceNode]:
    """Roots are events whose cause is not in the set (the commit's detections)."""
    by_id = {e.id: TraceNode(e, None) for e in events}
    roots: list[TraceNode] = []
    for e in events:
        node = by_id[e.id]
        parent = by_id.get(e.causationid)
        if parent is None:
            roots.append(node)
        else:
            node.latency_ms = latency_ms(parent.event, e)
            parent.children.append(node)
    return roots


def end_to_end_ms(events: Sequence[Event]) -> dict[str, float]:
    """Per environment: first event of the commit -> its last event."""
    out: dict[str, float] = {}
    by_env: dict[str, list[Event]] = {}
    for e in events:
        by_env.setdefault(e.subject, []).append(e)
    for env, evs in by_env.items():
        ms = latency_ms(evs[0], evs[-1])
        if ms is not None:
            out[env] = ms
    return out
