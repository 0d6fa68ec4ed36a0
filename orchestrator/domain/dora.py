"""DORA metrics per environment, computed from deployment history (itself a fold of the log).

Definitions (``window`` ends at ``now``; an attempt belongs to the window when it *finished*
in it; "ok"/"failure" times below are event times from the log):

- **Deployment**: an attempt whose outcome is ``succeeded`` (``apply.succeeded``: the target
  changed). ``skipped`` (nothing to change) and ``superseded`` (never applied) are not
  deployments. **Deployment frequency** = deployments in the window / window length in days.
- **Lead time for changes**: for each deployment, ``apply.succeeded`` time minus the commit's
  ``committed_at``. Reported as median and p90 (nearest rank), in seconds.
- **Change failure rate**: failed changes / change attempts. A *change attempt* is an attempt
  that ended ``succeeded``, ``failed`` (``apply.failed``), ``render-failed``
  (``render.failed``) or ``dead`` (``render.dead``/``apply.dead``). It *failed* when it ended
  in one of the last three, or when it succeeded and a ``health.degraded`` verdict about its
  revision followed. ``rejected``, ``skipped`` and ``superseded`` attempts are not counted.
- **Time to restore**: an environment is *failing* from the first failure (the failed
  attempt's finish, or the degraded verdict's time) until the next *ok*: a succeeded or
  skipped attempt that was not degraded, or a healthy verdict after a degraded one. Each such
  span that ended in the window is one restore; reported as median (seconds). A span still
  open at ``now`` is reported as ``failing_since``.

Drift heals (``cause = "drift"``) are not changes and are not counted.

Pure: the caller passes ``now``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from orchestrator.domain import history as hist
from orchestrator.domain.history import Attempt
from orchestrator.domain.trace import parse_time

DEFAULT_WINDOW: Final = timedelta(days=30)
CHANGE_OUTCOMES: Final = frozenset({hist.SUCCEEDED, *hist.FAILURES})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400})


def parse_duration(text: str, default_unit: str = "d") -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w``; a bare number is in ``default_unit``."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30d, 12h, 90m, 45s")
    unit = m.group(2) or default_unit
    return timedelta(seconds=float(m.group(1)) * _UNIT[unit])


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


@dataclass(frozen=True, slots=True)
class EnvMetrics:
    env: str
    window_days: float
    deployments: int
    deployment_frequency_per_day: float
    lead_time_median_s: float | None
    lead_time_p90_s: float | None
    lead_time_samples: int
    change_attempts: int
    change_failures: int
    change_failure_rate: float | None
    time_to_restore_median_s: float | None
    restores: int
    failing_since: str  # "" unless the environment is failing now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seconds(a: datetime, b: datetime) -> float:
    return round((b - a).total_seconds(), 3)


def env_metrics(env: str, attempts: Iterable[Attempt], *, now: datetime,
                window: timedelta = DEFAULT_WINDOW) -> EnvMetrics:
    """The four keys for one environment's attempts (any order)."""
    start = now - window

    def in_window(t: datetime | None) -> bool:
        return t is not None and start < t <= now

    deployments = 0
    lead_times: list[float] = []
    changes = failures = 0
    marks: list[tuple[datetime, int, str]] = []  # (time, order, "fail"|"ok")
    for a in attempts:
        finished = parse_time(a.finished_at) if a.finished_at else None
        degraded = parse_time(a.degraded_at) if a.degraded_at else None
        recovered = parse_time(a.recovered_at) if a.recovered_at else None
        if finished is None or a.cause != "commit":
            continue  # still in progress, or a drift heal (not a change)
        if a.outcome == hist.SUCCEEDED and in_window(finished):
            deployments += 1
            committed = parse_time(a.committed_at) if a.committed_at else None
            if committed is not None:
                lead_times.append(max(0.0, _seconds(committed, finished)))
        if a.outcome in CHANGE_OUTCOMES and in_window(finished):
            changes += 1
            failures += a.outcome in hist.FAILURES or (a.outcome == hist.SUCCEEDED
                                                       and degraded is not None)
        if a.outcome in hist.FAILURES:
            marks.append((finished, a.last_seq, "fail"))
        elif a.outcome in (hist.SUCCEEDED, hist.SKIPPED):
            marks.append((finished, a.last_seq, "ok" if degraded is None or degraded > finished
                          else "fail"))
            if degraded is not None:
                marks.append((degraded, a.last_seq, "fail"))
                if recovered is not None:
                    marks.append((recovered, a.last_seq, "ok"))
    restores: list[float] = []
    failing: datetime | None = None
    for t, _, kind in sorted(marks, key=lambda m: (m[0], m[1])):
        if t > now:
            break
        if kind == "fail" and failing is None:
            failing = t
        elif kind == "ok" and failing is not None:
            if in_window(t):
                restores.append(_seconds(failing, t))
            failing = None
    days = window.total_seconds() / 86400
    return EnvMetrics(
        env=env, window_days=round(days, 4), deployments=deployments,
        deployment_frequency_per_day=round(deployments / days, 4) if days > 0 else 0.0,
        lead_time_median_s=median(lead_times), lead_time_p90_s=percentile(lead_times, 90),
        lead_time_samples=len(lead_times), change_attempts=changes, change_failures=failures,
        change_failure_rate=round(failures / changes, 4) if changes else None,
        time_to_restore_median_s=median(restores), restores=len(restores),
        failing_since=failing.isoformat().replace("+00:00", "Z") if failing else "",
    )


def compute(attempts_by_env: dict[str, list[Attempt]], *, now: datetime,
            window: timedelta = DEFAULT_WINDOW) -> list[EnvMetrics]:
    """DORA metrics for every environment, sorted by name."""
    return [env_metrics(env, attempts, now=now, window=window)
            for env, attempts in sorted(attempts_by_env.items())]
