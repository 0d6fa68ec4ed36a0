"""Which sources the git-watcher polls and when: the primary and ``sources:`` of
conveyor.yaml as ``WatchedSource``, the poll interval, its jitter and the backoff after failed
fetches. Pure (``decide`` re-exports these names)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.config import DEFAULT_SOURCE, Config, VerifyConfig
from orchestrator.domain.giturls import parse

DEFAULT_LOCAL_INTERVAL = 5.0
DEFAULT_REMOTE_INTERVAL = 180.0
MIN_BACKOFF = 1.0


@dataclass(frozen=True, slots=True)
class SourceRef:
    """A source as it appears in events: its name, its repository (path or URL, never with a
    password) and the branch watched."""

    name: str
    repo: str
    branch: str


@dataclass(frozen=True, slots=True)
class WatchedSource:
    """One source the watcher polls. ``credentials`` None means "the process environment's"
    (the primary source, ``CONVEYOR_GIT_*``); otherwise the ``${VAR}``/file references of
    conveyor.yaml, expanded only when fetching."""

    name: str
    repo: str
    branch: str = ""
    interval: float | None = None
    credentials: Mapping[str, Any] | None = None
    verify: VerifyConfig | None = None
    primary: bool = False

    def ref(self, branch: str | None = None) -> SourceRef:
        return SourceRef(self.name, self.repo, branch if branch is not None else self.branch)

    def event_config(self) -> dict[str, Any]:
        """What the renderer needs to fetch this source itself (no secret values)."""
        return {"name": self.name, "url": self.repo, "branch": self.branch,
                "credentials": None if self.credentials is None else dict(self.credentials)}


def is_local_url(repo: str) -> bool:
    try:
        return parse(repo).is_local
    except ValueError:
        return False


def watched_sources(config: Config | None, primary_repo: str,
                    primary_branch: str) -> dict[str, WatchedSource]:
    """Every source to poll: the primary (``default``, the repository holding conveyor.yaml)
    and each entry of ``sources:``. A ``sources.default`` entry only adds settings to the
    primary (interval, verify, webhook); an entry with an empty ``url`` names the primary's
    repository on its own branch."""
    cfg = config.sources if config is not None else {}
    base = cfg.get(DEFAULT_SOURCE)
    out = {DEFAULT_SOURCE: WatchedSource(
        DEFAULT_SOURCE, primary_repo, primary_branch or (base.branch if base else ""),
        interval=base.interval if base else None, credentials=None,
        verify=base.verify if base else None, primary=True)}
    for name, src in cfg.items():
        if name == DEFAULT_SOURCE:
            continue
        same_repo = not src.url.strip()
        out[name] = WatchedSource(
            name, primary_repo if same_repo else src.url.strip(),
            src.branch or (primary_branch if same_repo else ""), interval=src.interval,
            credentials=None if same_repo else dict(src.credentials), verify=src.verify)
    return out


def poll_interval(source: WatchedSource, override: float | None) -> float:
    """``--interval`` beats ``sources.<name>.interval``; then 5 s local, 3 min remote."""
    if override is not None:
        return override
    if source.interval is not None:
        return source.interval
    return DEFAULT_LOCAL_INTERVAL if is_local_url(source.repo) else DEFAULT_REMOTE_INTERVAL


def jittered(interval: float, rand: float) -> float:
    """The next regular poll: ``interval`` +-10% (``rand`` uniform in [0, 1))."""
    return interval * (0.9 + 0.2 * rand)


def backoff_delay(failures: int, interval: float, rand: float) -> float:
    """The wait after ``failures`` consecutive failed fetches (``rand`` uniform in [0, 1)).

    Exponential from ``interval/16`` (at least 1 s), doubling per failure and capped at the
    interval, with "equal jitter" (between half and all of the step) so that many replicas
    failing together do not retry in lockstep. A source that is down is thus retried soon
    after a blip, then no more often than a healthy one is polled.
    """
    if failures <= 0:
        return jittered(interval, rand)
    base = max(MIN_BACKOFF, interval / 16)
    step = min(interval, base * 2.0 ** min(failures - 1, 30))
    return step / 2 + step / 2 * rand
