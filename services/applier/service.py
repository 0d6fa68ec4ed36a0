"""applier: render.succeeded -> apply the bundle to the environment's target.

Exactly-once over at-least-once: before acting it asks the target what it holds, and it
records ``apply.started`` before it touches the target. A bundle the target already holds is
``apply.skipped``; a render older than what the target holds (a late redelivery) is
``apply.superseded`` - unless the target shows this very render applied (the process died
between the effect and its record): that is ``apply.succeeded``. A target written under another
log's epoch (the log was wiped and re-created) is ``log.reset`` once, then handled by digest
alone. Within one environment applies run one at a time in commit order, and when several
renders wait only the newest is applied: the others are superseded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import replace
from secrets import token_hex
from typing import Any

import structlog

from orchestrator import subjects
from orchestrator.adapters.nats_lease import Lease
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import decode_bundle, digest_of, encode_bundle
from orchestrator.domain.codec import build, decode_as
from orchestrator.domain.config import RetryPolicy
from orchestrator.domain.events import Event, derive_id, new_event
from orchestrator.domain.payloads import (
    ApplyRetrying,
    ApplyStarted,
    ApplySuperseded,
    LogReset,
    StageInput,
)
from orchestrator.errors import ConfigError, FencedError, PermanentError, TransientError
from orchestrator.health_rules.engine import HealthEngine, engine_for_render
from orchestrator.health_rules.sources import HealthRuleError
from orchestrator.ports import ApplyRequest, Target, TargetState
from orchestrator.resources import Resources
from orchestrator.runtime import Ack, Consumer, ConsumerSpec, Delivery, Fail, Outcome, Retry
from orchestrator.targets.git.target import git_target_for
from orchestrator.targets.kube.settings import expanded_target
from orchestrator.targets.kube.target import kube_target
from services.applier import outcomes
from services.applier.drift import DriftLoop

log = structlog.get_logger(__name__)
SOURCE = "conveyor/applier"
ACK_WAIT = 5.0  # as the renderer's: a render held by a killed applier is back after 5 s


class Applier:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.bus = resources.bus
        self.settings = resources.settings
        self._consumer: Consumer | None = None
        self._drift: DriftLoop | None = None
        self._lease: Lease | None = None
        self._leading: asyncio.Task[None] | None = None
        self.fence = 0  # the lease's fencing token while this applier acts under one

    def consumer_spec(self) -> ConsumerSpec:
        envs = self.settings.envs
        return ConsumerSpec(
            durable=subjects.consumer_name("applier", envs), stage="apply",
            filters=[*subjects.filter_for(ev.RENDER_SUCCEEDED, envs or None),
                     *subjects.filter_for(ev.ENV_REMOVED, envs or None)],
            handler=self.handle, supersede=self.supersede, max_deliver=12, ack_wait=ACK_WAIT,
            concurrency=16, order=lambda d: decode_as(d.event, StageInput).origin_seq or d.seq,
            one_outcome=True)

    async def start(self) -> None:
        spec = self.consumer_spec()
        if self.settings.lease_ttl > 0 and self.settings.envs:
            # an environment's appliers may run as several replicas: one acts, the others wait
            self._lease = Lease(self.bus, key=f"applier.{spec.durable}",
                                holder=f"{socket.gethostname()}:{os.getpid()}:{token_hex(3)}",
                                ttl=self.settings.lease_ttl)
            self._leading = asyncio.create_task(self._lead(), name=f"lead:{spec.durable}")
            return
        await self._act()

    async def _act(self) -> None:
        self._consumer = Consumer(self.bus, self.consumer_spec())
        await self._consumer.start()
        self._drift = DriftLoop(self.resources)
        await self._drift.start()

    async def _lead(self) -> None:
        assert self._lease is not None
        while True:
            self.fence = await self._lease.acquire()
            await self._act()
            await self._lease.lost.wait()  # a successor took over: stop acting at once
            self.fence = 0
            await self._idle()

    async def _idle(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._drift is not None:
            await self._drift.stop()   # after the consumer; Resources.close closes the clients
            self._drift = None

    async def stop(self) -> None:
        if self._leading is not None:
            self._leading.cancel()
            with contextlib.suppress(BaseException):
                await self._leading
        await self._idle()
        if self._lease is not None:
            await self._lease.release()  # the standby takes over now, not after the ttl

    def target_for(self, env: dict[str, Any], data: dict[str, Any]) -> Target:
        if "git" in (env.get("target") or {}):  # credentials stay ${VAR} references here
            return git_target_for(env["name"], env["target"]["git"] or {}, data,
                                  data_dir=self.settings.data_dir,
                                  primary_repo=self.settings.repo,
                                  locks=self.resources.git_locks,
                                  scope=self.settings.secrets.scope(),
                                  local_dirs=self.settings.allow_local_paths)
        target = env.get("target") or {}
        if "kubernetes" in target:
            return kube_target(env["name"], expanded_target(
                env["name"], target["kubernetes"], self.settings.secrets.scope()),
                env.get("sync") or {}, self.resources.kube)
        raise PermanentError(f"environment {env['name']}: unknown target {sorted(target)}",
                             reason="UnsupportedTarget")

    def health_for(self, env: dict[str, Any], data: dict[str, Any]) -> HealthEngine:
        """The health rules of this apply: the repository's at the rendered commit (CEL checks
        of conveyor.yaml, its argocd-cm file, its customizations tree), then the operator's,
        then the built-in ones. Rules that cannot be used fail the apply, naming the file."""
        try:
            return engine_for_render(self.resources.health_engine(), env, data)
        except HealthRuleError as exc:
            raise PermanentError(str(exc), reason="InvalidHealthRules") from None

    async def supersede(self, older: Delivery, newest: Delivery) -> list[Event]:
        if older.event.type == ev.ENV_REMOVED:  # re-added before the prune ran: nothing to do
            return []
        if older.attempt > 1 and await self._applied_before(older.event):
            # redelivered after a crash that came between the effect and its record
            return [self._outcome(ev.APPLY_SUCCEEDED, older.event, None, time.monotonic(),
                                  summary="applied before a restart")]
        return [self._superseded(older.event, newest.event.correlationid)]

    def _request(self, event: Event) -> ApplyRequest:
        """What applying ``event`` asks of its target (the objects are loaded later)."""
        data = event.data
        return ApplyRequest(
            env=event.subject, revision=event.correlationid, digest=str(data["digest"]),
            objects=(), origin_seq=int(data.get("origin_seq") or 0),
            message=str(data.get("message") or ""), cause=str(data.get("cause") or "commit"),
            epoch=self.bus.epoch, fence=self.fence)

    async def _applied_before(self, event: Event) -> bool:
        try:
            target = self.target_for(dict(decode_as(event, StageInput).env or {}), event.data)
            return await target.has_applied(self._request(event))
        except Exception as exc:  # unknown: superseded is what it would have been
            log.warning("apply.recognise_failed", env=event.subject, error=str(exc))
            return False

    def _superseded(self, event: Event, by: str) -> Event:
        return outcomes.one_per_cause(new_event(ev.APPLY_SUPERSEDED, env=event.subject, cause=event,
                                      source=SOURCE,
                                      data=build(ApplySuperseded, **outcomes.pass_on(event),
                                                 superseded_by=by)))

    async def handle(self, delivery: Delivery) -> Outcome:
        if delivery.event.type == ev.ENV_REMOVED:
            return await self.remove(delivery)
        event = delivery.event
        data = event.data
        env = data["env"]
        policy = RetryPolicy(**(env.get("retry") or {}))
        started = time.monotonic()
        reset: list[Event] = []
        try:
            target = self.target_for(env, data)
            held = await target.current()
            if held.epoch and held.epoch != self.bus.epoch:
                # written under another log (this one was wiped and re-created): its sequences
                # and revision mean nothing here; only the digest says what it holds
                reset = await self._log_reset(event, target, held)
                held = TargetState(held.digest, None, None, held.epoch)
            origin = int(data.get("origin_seq") or 0)
            request = self._request(event)
            if held.origin_seq is not None and held.origin_seq > origin:
                if delivery.attempt > 1 and await target.has_applied(request):
                    # applied, then the process died before saying so, and a newer commit was
                    # applied since: it was deployed, so the record says so
                    return Ack([self._outcome(ev.APPLY_SUCCEEDED, event, target, started,
                                              summary="applied before a restart",
                                              superseded_by=held.revision or "")])
                return Ack([self._superseded(event, held.revision or "")])
            if held.digest == data["digest"] and held.revision == event.correlationid \
                    and held.origin_seq == origin:
                # this very render was applied and the process died before the ack: say
                # "succeeded" again (same event id, so the log keeps one outcome)
                return Ack([self._outcome(ev.APPLY_SUCCEEDED, event, target, started,
                                          summary="applied before a restart")])
            # a manual sync re-applies even an unchanged bundle (it is how drift is undone
            # without selfHeal); the target itself still skips what is truly identical
            if held.digest == data["digest"] and data.get("cause") != "sync":
                return Ack([*reset, self._outcome(ev.APPLY_SKIPPED, event, target, started,
                                                  summary="target already holds this bundle")])
            payload = await self.bus.get_bundle(str(data["digest"]))
            if payload is None:
                raise PermanentError(f"bundle {data['digest']} is missing from the store",
                                     reason="BundleMissing")
            health = self.health_for(env, data)  # unusable rules fail before the target
            # record before effect: a crash from here on leaves a trace of the attempt
            await self.bus.publish(new_event(
                ev.APPLY_STARTED, env=event.subject, cause=event, source=SOURCE,
                data=build(ApplyStarted, **outcomes.pass_on(event),
                           target=target.description, attempt=delivery.attempt)))
            result = await target.apply(replace(request, objects=decode_bundle(payload),
                                                health=health))
        except FencedError as exc:  # a successor holds the lease: leave the render to it
            log.warning("apply.fenced", env=event.subject, error=str(exc))
            return Retry(exc.delay or 5.0, reason=str(exc))
        except (PermanentError, ConfigError) as exc:
            log.error("apply.failed", env=event.subject, revision=event.correlationid[:12],
                      reason=exc.reason, error=str(exc))
            return Fail([*reset, self._outcome(ev.APPLY_FAILED, event, None, started,
                                               error=str(exc), reason=exc.reason)])
        except TransientError as exc:
            attempt = delivery.attempt
            if attempt > policy.limit:
                return Fail([self._outcome(ev.APPLY_FAILED, event, None, started, error=str(exc),
                                           reason=exc.reason, attempts=attempt)])
            delay = exc.delay if exc.delay is not None else policy.delay(attempt)
            retrying = new_event(ev.APPLY_RETRYING, env=event.subject, cause=event,
                                 source=SOURCE, key=str(attempt),
                                 data=build(ApplyRetrying, **outcomes.pass_on(event),
                                            error=str(exc), attempt=attempt, delay=delay))
            return Retry(delay, reason=str(exc), emit=[*reset, retrying])
        ok, events = outcomes.for_result(event, result, source=SOURCE, started=started,
                                         target=target)
        log.info("apply.done", env=event.subject, revision=event.correlationid[:12],
                 outcome=events[0].outcome, summary=result.summary,
                 reason=result.failure or "")
        # an unhealthy rollout is an outcome (apply.failed), not an error
        return Ack([*reset, *events]) if ok else Fail([*reset, *events])

    async def _log_reset(self, event: Event, target: Target, held: TargetState) -> list[Event]:
        """One ``log.reset`` per environment and foreign epoch (none if this log has it)."""
        known = await self.bus.last_event(event.subject, ev.LOG_RESET)
        if known is not None and decode_as(known.event, LogReset).target_epoch == held.epoch:
            return []
        log.warning("apply.log_reset", env=event.subject, target_epoch=held.epoch,
                    log_epoch=self.bus.epoch, target_revision=(held.revision or "")[:12])
        reset = new_event(ev.LOG_RESET, env=event.subject, cause=event, source=SOURCE,
                          data=build(LogReset, target_epoch=held.epoch,
                                     log_epoch=self.bus.epoch, target_revision=held.revision,
                                     target_seq=held.origin_seq, digest=held.digest,
                                     target=target.description, summary=(
            "the target was written under another event log (this one was reset): its state "
            "is treated as unknown and the bundle applied by digest")))
        return [replace(reset, id=derive_id(ev.LOG_RESET, event.subject, str(held.epoch),
                                            self.bus.epoch))]

    async def remove(self, delivery: Delivery) -> Outcome:
        """An environment left conveyor.yaml (or its generator stopped making it). ``prune``
        applies the empty bundle: a Git target gets a commit that removes every manifest (its
        history stays), a cluster has every object of the environment's inventory deleted.
        ``orphan`` (the default) leaves the target untouched, as Argo CD's non-cascading delete
        does. Who triggers it: a committer, by removing the environment from the repository."""
        event = delivery.event
        data = event.data
        if data.get("onRemove") != "prune":
            return Ack([])
        env = data["env"]
        started = time.monotonic()
        try:
            target = self.target_for(env, data)
            result = await target.apply(ApplyRequest(
                env=event.subject, revision=event.correlationid, digest=EMPTY_DIGEST,
                objects=[], origin_seq=delivery.seq, cause="remove", epoch=self.bus.epoch,
                message=f"environment {event.subject} removed from conveyor.yaml"))
        except (PermanentError, ConfigError) as exc:
            return Fail([self._outcome(ev.APPLY_FAILED, event, None, started, error=str(exc),
                                       reason=exc.reason)])
        except TransientError as exc:
            return Retry(exc.delay if exc.delay is not None else 5.0, reason=str(exc))
        return Ack([self._outcome(ev.ENV_PRUNED, event, target, started,
                                  summary=result.summary or "target cleared",
                                  generator=data.get("generator", ""))])

    def _outcome(self, kind: str, event: Event, target: Target | None, started: float,
                 **extra: Any) -> Event:
        return outcomes.outcome(kind, event, source=SOURCE, started=started, target=target,
                                data=extra)


EMPTY_DIGEST = digest_of(encode_bundle([]))
