"""Automatic promotion: ``promotion.<to>.auto: true`` fires from the events, once per revision.

It runs beside the git-watcher (the process that holds the source's credentials) and follows
the log; the rules are those of the configuration in force (the last ``config.loaded``), so
nothing is fetched until a rule can fire. An apply or a health verdict wakes it, and so does
the end of a soak time it is waiting for. It then checks the gates
(``orchestrator.domain.promotion``) *without* publishing anything, so waiting for a soak
fills no log; when they pass and ``to`` has not received that revision yet
(``promotion.committed|proposed`` in the log, by hand or automatically), it promotes
through ``GitOps.promote`` (``auto: true`` in the events). A failure is logged and retried at
the next wake-up; a promotion that changes nothing is remembered for the process's life.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import structlog

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain import promotion
from orchestrator.domain.codec import decode_as
from orchestrator.domain.config import PromotionConfig, parse_config
from orchestrator.domain.generator_pulls import PullRequest
from orchestrator.domain.payloads import ConfigLoaded
from orchestrator.domain.trace import parse_time
from orchestrator.errors import ConfigError, ConveyorError
from orchestrator.gitops.forge import ForgeSettings
from orchestrator.gitops.workflow import GitOps, Refresh, Result
from orchestrator.resources import Resources

log = structlog.get_logger(__name__)

WAKE_TYPES = frozenset({*promotion.DEPLOYED, ev.HEALTH_HEALTHY, ev.CONFIG_LOADED})
IDLE_CHECK = 300.0  # seconds between checks when nothing happens (a missed wake-up heals)


class AutoPromoter:
    def __init__(self, resources: Resources, *, forge: ForgeSettings | None = None,
                 refresh: Refresh | None = None) -> None:
        self.resources = resources
        self.refresh = refresh
        self.bus: EventBus = resources.bus
        self.forge = forge
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._noop: set[tuple[str, str, str]] = set()
        self.checks = 0  # how many times the rules were evaluated (tests await it)
        # the automatic rules of the config in force, by the sequence of its config.loaded:
        # an apply wakes the promoter, and at 1,000 environments re-parsing the config (its
        # generators expanded) for every apply cost a rollout more than the renders did
        self._rules: tuple[int, list[PromotionConfig]] = (0, [])

    async def start(self) -> None:
        start = await self.bus.last_seq() + 1
        self._tasks = [asyncio.create_task(self._follow(start)),
                       asyncio.create_task(self._loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []

    async def _follow(self, start: int) -> None:
        # only the events that can open a gate, filtered on the server (not every event decoded)
        filters = [f for kind in sorted(WAKE_TYPES) for f in subjects.filter_for(kind, None)]
        async for stored in self.bus.read(filters, start_seq=start, stop_at_end=False):
            if stored.event.type in WAKE_TYPES:
                self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                delay = await self.check_once()
            except ConveyorError as exc:
                log.warning("promoter.check_failed", error=exc.message, reason=exc.reason)
                delay = 30.0
            except Exception as exc:
                log.warning("promoter.check_failed", error=str(exc) or type(exc).__name__)
                delay = 30.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()

    async def check_once(self, now: datetime | None = None) -> float:
        """Evaluate every automatic rule now; returns how long to wait before the next check
        when no event wakes it (the nearest soak end, else ``IDLE_CHECK``)."""
        self.checks += 1
        loaded = await self.bus.last_event(ev.NO_ENV, ev.CONFIG_LOADED)
        if loaded is None:
            return IDLE_CHECK
        if loaded.seq != self._rules[0]:
            self._rules = (loaded.seq, self._auto_rules(decode_as(loaded.event, ConfigLoaded)))
        rules = self._rules[1]
        if not rules:
            return IDLE_CHECK
        gitops = GitOps(self.resources, forge=self.forge, source="conveyor/promoter",
                        refresh=self.refresh)
        now = now or datetime.now(UTC)
        wait = IDLE_CHECK
        for rule in rules:
            verdict = promotion.check(rule.source, await gitops.gate_events(rule.source),
                                      soak=rule.healthy_for, now=now)
            if not verdict.allowed:
                since = parse_time(verdict.healthy_since) if verdict.healthy_since else None
                if since is not None:
                    due = since + timedelta(seconds=rule.healthy_for) - now
                    wait = min(wait, max(1.0, due.total_seconds()))
                continue
            key = (rule.to, rule.source, verdict.revision)
            if key in self._noop or promotion.already_promoted(
                    rule.to, rule.source, verdict.revision, await self._promotions(rule.to)):
                continue
            result: Result = await gitops.promote(rule.source, rule.to, auto=True,
                                                  by="auto", now=now)
            if not result.changed:
                self._noop.add(key)
        return wait

    @staticmethod
    def _auto_rules(loaded: ConfigLoaded) -> list[PromotionConfig]:
        """The automatic rules of a ``config.loaded``: the config in force, as the watcher
        loaded it (its generators' directories and pull requests included), no fetch."""
        dirs, pulls = loaded.dirs, loaded.pulls
        try:
            config = parse_config(
                loaded.text,
                dirs=[str(d) for d in dirs] if dirs is not None else None,
                pulls=[PullRequest.from_dict(p) for p in pulls] if pulls is not None
                else None)
        except (ConfigError, KeyError, TypeError, ValueError):
            return []
        return [r for r in config.promotion.values() if r.auto]

    async def _promotions(self, env: str) -> list[ev.Event]:
        filters = subjects.filter_for("conveyor.promotion", [env])
        return [s.event async for s in self.bus.read(filters)]
