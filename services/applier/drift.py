"""Drift detection and self-heal for the kubernetes environments this applier serves.

Every ``sync.driftInterval`` (default 3m, ±10% jitter so environments do not check in lockstep)
each kubernetes environment is compared with the bundle Conveyor last put there (the
inventory's ``attempted-*`` digest, fetched from the bundle store) by ``kube_compare``. A
difference is published as ``conveyor.drift.detected`` with a summary of the changed objects.

With ``sync.selfHeal: true`` the bundle is then re-applied **directly, inside this process**, and
the outcome published as ``conveyor.apply.succeeded|skipped|failed`` with ``data.cause = "drift"``
(plus the health event), each caused by the drift event. Why directly rather than by publishing
a re-apply request for the applier's consumer: the consumer skips a bundle the target already
holds (exactly-once), which a heal by definition is. Ordering and exactly-once are kept instead:

- **per-environment ordering**: the heal holds the environment's lock (``KubePool.env_lock``),
  which every apply of this process holds too, so a heal never interleaves with a commit's apply;
  and under the lock it re-reads the inventory and heals only if the cluster still holds the very
  bundle it checked (compare-and-set on the attempted digest and origin sequence): a heal can
  never put an older bundle over a newer one. The loop runs in the applier that serves the
  environment (``conveyor run applier --env prod`` checks prod only), like the consumer lane.
- **exactly-once events**: ids are deterministic. The drift event's key is a fingerprint of the
  bundle digest and the drifted objects' identities, changes and live ``resourceVersion``s, so
  the same drift seen by two checks (or after a restart) is one event, JetStream dropping the
  duplicate, while a new edit after a heal is a new event. The apply outcome derives its id from
  the drift event. A crash mid-heal leaves the drift in place; the next check heals it again
  (server-side apply is idempotent).

``check(env)`` runs one check now (tests, and a future "sync now" button); ``start``/``stop`` run
the periodic loop, whose failures are logged and retried at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from orchestrator.domain import events as ev
from orchestrator.domain.bundle import decode_bundle
from orchestrator.domain.codec import build, decode_as
from orchestrator.domain.diff import ObjectDiff, summarise
from orchestrator.domain.events import Event, derive_id, new_event
from orchestrator.domain.payloads import ConfigLoaded, DriftDetected, RenderSucceeded
from orchestrator.errors import ConveyorError, PermanentError, TransientError
from orchestrator.health_rules.engine import HealthEngine, engine_for_render
from orchestrator.health_rules.sources import HealthRuleError
from orchestrator.ports import ApplyRequest
from orchestrator.resources import Resources
from orchestrator.targets.kube.compare import compare
from orchestrator.targets.kube.inventory import Record
from orchestrator.targets.kube.settings import expanded_target
from orchestrator.targets.kube.target import KubeTarget, kube_target
from services.applier import outcomes

log = structlog.get_logger(__name__)
SOURCE = "conveyor/drift"
REDISCOVER = 30.0
"""Seconds between looks for new kubernetes environments (and changed intervals)."""
JITTER = 0.1
LISTED = 50


@dataclass(frozen=True, slots=True)
class DriftCheck:
    """The result of one check of one environment."""

    env: str
    held: Record
    diffs: list[ObjectDiff]
    events: list[Event] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.diffs)


def _object(d: ObjectDiff) -> dict[str, Any]:
    return {"kind": d.key.kind, "namespace": d.key.namespace, "name": d.key.name,
            "change": d.change}


class DriftLoop:
    def __init__(self, resources: Resources, *,
                 rng: random.Random | None = None, rediscover: float = REDISCOVER) -> None:
        self.resources = resources
        self.bus = resources.bus
        self.settings = resources.settings
        self._rng = rng or random.Random()
        self._rediscover = rediscover
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="drift")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    # -- which environments ----------------------------------------------------------------

    async def environments(self) -> list[str]:
        """The environments served: ``--env`` ones, else every one of the loaded config."""
        if self.settings.envs:
            return list(self.settings.envs)
        loaded = await self.bus.last_event(ev.NO_ENV, ev.CONFIG_LOADED)
        if loaded is None:
            return []
        return [str(e) for e in decode_as(loaded.event, ConfigLoaded).environments or ()]

    async def target(self, env: str) -> KubeTarget | None:
        """The kubernetes target of ``env`` per its latest render (None: not kubernetes)."""
        rendered = await self.bus.last_event(env, ev.RENDER_SUCCEEDED)
        if rendered is None:
            return None
        config = decode_as(rendered.event, RenderSucceeded).env or {}
        target = config.get("target") or {}
        if "kubernetes" not in target:
            return None
        scope = self.settings.secrets.scope()
        return kube_target(env, expanded_target(env, target["kubernetes"], scope),
                           config.get("sync") or {}, self.resources.kube)

    # -- one check -------------------------------------------------------------------------

    async def check(self, env: str) -> DriftCheck | None:
        """Compare ``env`` with its bundle now; publish drift (and heal) events if it drifted.

        None when there is nothing to compare: not a kubernetes environment, nothing applied
        yet, or the bundle is gone from the store.
        """
        target = await self.target(env)
        if target is None:
            return None
        stored = await target.stored()
        held = stored.attempted
        if held is None:
            return None
        payload = await self.bus.get_bundle(held.digest)
        if payload is None:
            log.warning("drift.bundle_missing", env=env, digest=held.digest[:19])
            return None
        desired = decode_bundle(payload)
        diffs, versions = await compare(target, desired, stored.inventory)
        if not diffs:
            log.debug("drift.none", env=env, digest=held.digest[:19])
            return DriftCheck(env, held, [])
        fingerprint = derive_id(held.digest, *(f"{d.change}:{d.key}:{versions.get(d.key, '')}"
                                               for d in diffs))
        detected = new_event(
            ev.DRIFT_DETECTED, env=env, correlation=held.revision, source=SOURCE,
            key=f"drift:{fingerprint}",
            data=build(DriftDetected, revision=held.revision, digest=held.digest,
                       origin_seq=held.origin_seq, summary=summarise(diffs),
                       count=len(diffs), objects=[_object(d) for d in diffs[:LISTED]],
                       self_heal=target.settings.self_heal, target=target.description))
        await self.bus.publish(detected)
        log.info("drift.detected", env=env, objects=len(diffs), revision=held.revision[:12])
        events = [detected]
        if target.settings.self_heal:
            healed = await self._heal(target, held, desired, detected)
            await self.bus.publish_all(healed)
            events += healed
        return DriftCheck(env, held, diffs, events)

    async def _health(self, env: str, held: Record) -> HealthEngine:
        """The rules the heal waits by: those of the render it re-applies (the repository's
        at that commit, then the operator's) when that render is the latest, else the
        operator's."""
        operator = self.resources.health_engine()
        rendered = await self.bus.last_event(env, ev.RENDER_SUCCEEDED)
        render = None if rendered is None else decode_as(rendered.event, RenderSucceeded)
        if rendered is None or render is None or render.digest != held.digest:
            return operator.with_rules(operator.rules)
        try:
            return engine_for_render(operator, render.env or {}, rendered.event.data)
        except HealthRuleError:  # the apply of that render said so already
            return operator.with_rules(operator.rules)

    async def _heal(self, target: KubeTarget, held: Record, desired: list[dict[str, Any]],
                    detected: Event) -> list[Event]:
        started = time.monotonic()
        common = {"revision": held.revision, "digest": held.digest,
                  "origin_seq": held.origin_seq, "cause": "drift", "target": target.description}
        async with target.lock:
            now = (await target.stored()).attempted
            if now != held:
                log.info("drift.heal_superseded", env=target.env, checked=held.digest[:19],
                         now=now.digest[:19] if now else None)
                return []
            try:
                result = await target.sync(ApplyRequest(
                    env=target.env, revision=held.revision, digest=held.digest, objects=desired,
                    origin_seq=held.origin_seq, cause="drift",
                    health=await self._health(target.env, held)))
            except TransientError as exc:
                log.warning("drift.heal_retry_later", env=target.env, error=str(exc))
                return []
            except PermanentError as exc:
                return [outcomes.outcome(ev.APPLY_FAILED, detected, source=SOURCE,
                                         started=started, carry=common,
                                         data={"error": str(exc), "reason": exc.reason})]
        healed, events = outcomes.for_result(detected, result, source=SOURCE, started=started,
                                             target=target, carry=common,
                                             summary_prefix="self-heal: ",
                                             health_under_outcome=True)
        log.info("drift.healed" if healed else "drift.heal_unhealthy", env=target.env,
                 summary=result.summary)
        return events

    # -- the loop --------------------------------------------------------------------------

    def _jittered(self, interval: float) -> float:
        return interval * self._rng.uniform(1 - JITTER, 1 + JITTER)

    async def _safe_check(self, env: str) -> None:
        try:
            await self.check(env)
        except ConveyorError as exc:
            log.warning("drift.check_failed", env=env, error=str(exc), reason=exc.reason)
        except Exception as exc:  # a check must never end the loop
            log.exception("drift.check_crashed", env=env, error=str(exc))

    async def _run(self) -> None:
        due: dict[str, float] = {}
        intervals: dict[str, float] = {}
        looked = -self._rediscover
        while not self._stopping.is_set():
            now = time.monotonic()
            if now - looked >= self._rediscover:
                looked = now
                intervals = await self._intervals()
                due = {env: due.get(env, now + self._jittered(interval))
                       for env, interval in intervals.items()}
            ready = [env for env, when in due.items() if when <= now]
            if ready:
                await asyncio.gather(*(self._safe_check(env) for env in ready))
                for env in ready:
                    due[env] = time.monotonic() + self._jittered(intervals[env])
            wake = min([*due.values(), looked + self._rediscover])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(0.0, wake - time.monotonic()))

    async def _intervals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            for env in await self.environments():
                target = await self.target(env)
                if target is not None:
                    out[env] = target.settings.drift_interval
        except ConveyorError as exc:
            log.warning("drift.environments_failed", error=str(exc))
        except Exception as exc:
            log.exception("drift.environments_crashed", error=str(exc))
        return out
