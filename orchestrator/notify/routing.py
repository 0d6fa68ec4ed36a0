"""Which notifiers hear about which events: parse ``notifiers:`` once, then ``select_routes``.

Pure: no I/O, no clock, no environment. Each ``notifiers:`` entry becomes a ``Route``::

    notifiers:
      team-chat:
        type: slack
        token: ${SLACK_TOKEN}        # provider settings stay unexpanded until send time
        channel: "#deploys"
        events: ["conveyor.apply.*", "render.failed", "!conveyor.apply.skipped"]
        environments: ["prod", "stage-*"]
        severity: warning            # minimum: info < warning < error
        template: "{{ env }}: {{ outcome }} {{ commit.short }}"
        link: "https://conveyor.example.com/envs/{{ env }}"
        rateLimit: {perMinute: 6}

Matching rules:

- ``events``: globs or type prefixes, ``conveyor.`` optional (``apply`` = ``conveyor.apply.*``,
  ``render.failed`` = ``conveyor.render.failed``); a leading ``!`` excludes. Without ``events``
  a chat route gets the terminal outcomes (``TERMINAL_TYPES``); a commit-status route
  (github, gitlab) gets every event that moves a status, including ``pending``/``running``.
- ``environments``: globs on the event's environment; absent means all, including events about
  no single environment (``_``), which a list only matches if it names ``_``.
- ``severity``: the route's minimum (``severity_of`` grades events).
- ``conveyor.notify.*`` events are never routed: a failing notifier must not notify itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from orchestrator.domain import events as ev
from orchestrator.domain.events import TERMINAL_TYPES, Event
from orchestrator.notify import providers
from orchestrator.notify.message import Severity
from orchestrator.notify.providers.base import config_error

ROUTE_KEYS = frozenset({"type", "events", "environments", "severity", "template", "link",
                        "rateLimit"})
NOTIFY_PREFIX = "conveyor.notify."

_ERROR_OUTCOMES = frozenset({"failed", "dead", "degraded", "rejected", "invalid",
                             "fetch_failed"})
_WARNING_TYPES = frozenset({ev.DRIFT_DETECTED, ev.APPLY_RETRYING, ev.SOURCE_REWRITTEN,
                            ev.SOURCE_BRANCH_DELETED})


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``burst`` messages at once, refilled at ``per_minute``."""

    per_minute: int
    burst: int


@dataclass(frozen=True, slots=True)
class Route:
    """One configured notifier. ``settings`` are the provider's, still holding ``${VAR}``."""

    name: str
    type: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    severity: Severity = Severity.INFO
    template: str = ""
    link: str = ""
    rate_limit: RateLimit | None = None


def parse_routes(notifiers: Mapping[str, Mapping[str, Any]]) -> list[Route]:
    """Every ``notifiers:`` entry as a ``Route``, in configuration order.

    Raises ``ConfigError`` naming ``notifiers.<name>.<field>`` for a value of the wrong shape.
    Templates are not compiled here: a broken one falls back to the default at send time.
    """
    return [parse_route(str(name), raw) for name, raw in notifiers.items()]


def parse_route(name: str, raw: Mapping[str, Any]) -> Route:
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in providers.KINDS:
        raise config_error(f"unknown notifier type {kind!r} (expected one of "
                           f"{', '.join(sorted(providers.KINDS))})", "type", name=name)
    try:
        severity = Severity.parse(str(raw.get("severity", "info")))
    except ValueError as exc:
        raise config_error(str(exc), "severity", name=name) from None
    for key in ("template", "link"):
        if not isinstance(raw.get(key, ""), str):
            raise config_error(f"{key} must be a string", key, name=name)
    rate = _rate_limit(name, raw.get("rateLimit"))
    if rate is not None and kind in providers.STATUS_KINDS:
        raise config_error("commit statuses are one per commit and environment and are "
                           "never coalesced: remove rateLimit", "rateLimit", name=name)
    return Route(
        name=name,
        type=kind,
        settings={k: v for k, v in raw.items() if k not in ROUTE_KEYS},
        events=_strings(name, "events", raw.get("events")),
        environments=_strings(name, "environments", raw.get("environments")),
        severity=severity,
        template=str(raw.get("template", "")),
        link=str(raw.get("link", "")),
        rate_limit=rate,
    )


def _strings(name: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise config_error(f"{key} must be a list of names or globs", key, name=name)
    return tuple(v.strip() for v in value)


def _rate_limit(name: str, value: Any) -> RateLimit | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise config_error("rateLimit must be a mapping such as {perMinute: 6}", "rateLimit",
                           name=name)
    per_minute, burst = value.get("perMinute"), value.get("burst", value.get("perMinute"))
    for key, number in (("perMinute", per_minute), ("burst", burst)):
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise config_error(f"{key} must be a whole number of at least 1",
                               f"rateLimit.{key}", name=name)
    assert isinstance(per_minute, int) and isinstance(burst, int)
    return RateLimit(per_minute=per_minute, burst=burst)


def severity_of(event: Event) -> Severity:
    """``error`` for failures (failed, dead, degraded, rejected, invalid, fetch_failed),
    ``warning`` for drift, retries and rewritten or deleted sources, ``info`` otherwise
    (succeeded, skipped, superseded, healthy, recovered, started...)."""
    if event.type in _WARNING_TYPES:
        return Severity.WARNING
    if event.outcome in _ERROR_OUTCOMES:
        return Severity.ERROR
    return Severity.INFO


def default_events(kind: str) -> frozenset[str]:
    """The event types a route of ``kind`` gets when it lists no ``events``."""
    if kind == "github":
        return frozenset(providers.github.STATES)
    if kind == "gitlab":
        return frozenset(providers.gitlab.STATES)
    return TERMINAL_TYPES


def matches_events(patterns: Sequence[str], event_type: str) -> bool:
    """Whether ``event_type`` is included by ``patterns`` and not excluded by a ``!pattern``."""
    included = any(_type_matches(p, event_type) for p in patterns if not p.startswith("!"))
    excluded = any(_type_matches(p[1:], event_type) for p in patterns if p.startswith("!"))
    return included and not excluded


def _type_matches(pattern: str, event_type: str) -> bool:
    pattern = pattern.strip()
    if pattern != "*" and not pattern.startswith("conveyor."):
        pattern = f"conveyor.{pattern}"
    prefix = pattern.rstrip(".")
    return fnmatchcase(event_type, pattern) or event_type.startswith(prefix + ".") \
        or event_type == prefix


def matches_environment(patterns: Sequence[str], env: str) -> bool:
    return not patterns or any(fnmatchcase(env, p) for p in patterns)


def select_routes(routes: Iterable[Route], event: Event) -> list[Route]:
    """The routes that should hear about ``event``, in configuration order."""
    if event.type.startswith(NOTIFY_PREFIX):
        return []
    severity = severity_of(event)
    chosen = []
    for route in routes:
        if not providers.accepts(route.type, event):
            continue
        if route.events:
            if not matches_events(route.events, event.type):
                continue
        elif event.type not in default_events(route.type):
            continue
        if not matches_environment(route.environments, event.subject):
            continue
        if severity < route.severity:
            continue
        chosen.append(route)
    return chosen


__all__ = [
    "RateLimit", "Route", "default_events", "matches_environment",
    "matches_events", "parse_route", "parse_routes", "select_routes", "severity_of",
]
