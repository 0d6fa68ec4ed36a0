"""Listing environments at fleet size: filter, count and page a projection, purely.

``GET /api/v1/environments`` and ``conveyor status`` at 1,000 environments must not ship 1,000
records to show twenty. A filter selects (outcome, health, name prefix, generator), counts are
taken over the whole selection (so a dashboard shows totals without the rows) and a page is
``limit`` records after an opaque cursor, in name order, like Kubernetes' ``limit``/``continue``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.state import EnvState

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
FILTER_KEYS = ("outcome", "health", "prefix", "generator", "in_flight")


class ListingError(ValueError):
    """A bad filter or cursor: the API answers 400 with this message."""


@dataclass(frozen=True, slots=True)
class EnvFilter:
    outcome: frozenset[str] = frozenset()  # short names: succeeded, failed, dead, ...
    health: frozenset[str] = frozenset()  # case-insensitive: healthy, degraded, ...
    prefix: str = ""
    generator: str | None = None  # "" selects hand-written environments
    in_flight: bool | None = None

    @staticmethod
    def from_query(query: Mapping[str, str]) -> EnvFilter:
        def words(key: str) -> frozenset[str]:
            return frozenset(w.strip().lower() for w in query.get(key, "").split(",")
                             if w.strip())
        flight = query.get("in_flight")
        if flight not in (None, "", "true", "false"):
            raise ListingError("in_flight must be true or false")
        return EnvFilter(outcome=words("outcome"), health=words("health"),
                         prefix=query.get("prefix", ""), generator=query.get("generator"),
                         in_flight=None if not flight else flight == "true")

    def matches(self, s: EnvState) -> bool:
        if self.prefix and not s.name.startswith(self.prefix):
            return False
        if self.outcome and outcome_of(s) not in self.outcome:
            return False
        if self.health and s.health.lower() not in self.health:
            return False
        if self.generator is not None and s.generator != self.generator:
            return False
        return self.in_flight is None or bool(s.in_flight) == self.in_flight


def outcome_of(s: EnvState) -> str:
    """``conveyor.apply.succeeded`` -> ``succeeded``; ``none`` before the first outcome."""
    return s.last_outcome.rsplit(".", 1)[-1] if s.last_outcome else "none"


@dataclass(frozen=True, slots=True)
class Page:
    items: list[EnvState]
    total: int  # environments in the projection
    matched: int  # environments the filter selects
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    next: str | None = None  # cursor of the next page, None on the last

    def to_dict(self) -> dict[str, Any]:
        return {"environments": [s.to_dict() for s in self.items], "total": self.total,
                "matched": self.matched, "counts": self.counts, "continue": self.next}


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> str:
    try:
        padded = (token + "=" * (-len(token) % 4)).encode()
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ListingError("continue is not a cursor this API returned") from None


def parse_limit(raw: str | None, default: int = DEFAULT_LIMIT) -> int:
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise ListingError("limit must be a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ListingError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def page(states: Iterable[EnvState], flt: EnvFilter, limit: int = DEFAULT_LIMIT,
         cursor: str | None = None) -> Page:
    """One page of the environments ``flt`` selects, in name order, with counts over all."""
    ordered = sorted(states, key=lambda s: s.name)
    chosen = [s for s in ordered if flt.matches(s)]
    counts: dict[str, dict[str, int]] = {"outcome": {}, "health": {}, "generator": {}}
    for s in chosen:
        for key, value in (("outcome", outcome_of(s)), ("health", s.health),
                           ("generator", s.generator)):
            counts[key][value] = counts[key].get(value, 0) + 1
    after = decode_cursor(cursor) if cursor else None
    rest = [s for s in chosen if after is None or s.name > after]
    items = rest[:limit]
    more = len(rest) > limit
    return Page(items, len(ordered), len(chosen), counts,
                encode_cursor(items[-1].name) if more and items else None)
