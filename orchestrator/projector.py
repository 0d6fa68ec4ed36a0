"""The projector: folds every event into the projection kept in the state bucket.

Keys of the projection (``conveyor-state``; other keys in the bucket, such as the git-watcher's
``watcher.*`` cursor, are not part of it):

- ``env.<name>``: the environment's ``EnvState``; ``last_seq`` is the sequence it reflects.
- ``history.<name>``: its newest ``HISTORY_KEPT`` attempts, ``{"seq", "entries"}``. The full
  history is not kept here: ``conveyor history`` folds the stream, so it reaches back as far as
  the stream's retention.
- ``commit.<sha>``: ``{"envs": [...], "seq"}``: the environments a commit was announced to.
- ``position``: ``{"seq"}``: every event at or below it is folded into every key above.

Beside them ``log.epoch`` names the log they were folded from (``nats_schema``). A projection of
another log (the stream was wiped and re-created, or its position is past the stream's end) is
purged at start-up: status must not claim revisions that this log never applied.

The fold is :func:`orchestrator.domain.state.fold_records`, the same rule ``conveyor replay``
uses. Each record skips events at or below its own sequence, so a crash between two writes is
repaired by folding the event again: the records already written skip it, the others fold it
(whatever their order). ``position`` is written last: it is what lets a redelivery skip an
event without reading anything, so it must never get ahead of the records.

No reader ever sees a record ahead of ``position``, which is what makes ``conveyor replay``
exact on a running system (it compares the records with a fold of ``1..position``):

- while running, one event's writes happen under ``folding``, the lock the api's readers take;
- a crash can still leave an event half-written (records stored, ``position`` not). Its
  redelivery comes only after the consumer's ``ack_wait``, long after the restarted api has
  begun to serve. So :meth:`Projector.start` first completes such an event itself, reading it
  from the stream at ``position + 1``, before anything can read the projection; the
  redelivery then finds it at or below ``position`` and only acks it.

A restart folds from where the stored projection is: ``position`` N and the records are the
snapshot, loaded at start; the durable consumer resumes at its ack floor, and one made anew
starts at N + 1 (``tests/test_projector_restart.py`` counts the events a restart folds).

The projector consumes in stream order on one lane. A failed KV write is retried inside the
handler rather than nak'ed: a nak would let later events overtake this one, and the
per-record rule would then drop it. Blocking the lane is the correct back-pressure here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, loads
from orchestrator.domain.history import EnvHistory
from orchestrator.domain.state import EnvState, Projection, Records, fold_records
from orchestrator.runtime import Ack, Consumer, ConsumerSpec, Delivery, Outcome

log = structlog.get_logger(__name__)

ENV_PREFIX = "env."
HISTORY_PREFIX = "history."
COMMIT_PREFIX = "commit."
POSITION_KEY = "position"
EPOCH_KEY = "log.epoch"  # the epoch of the log the projection is folded from (not a record)
PROJECTION_PREFIXES = (ENV_PREFIX, HISTORY_PREFIX, COMMIT_PREFIX)
WRITE_RETRY_FOR = 120.0
ACK_WAIT = 5.0

Stored = dict[str, Any]  # key -> JSON value


def is_projection_key(key: str) -> bool:
    return key == POSITION_KEY or key.startswith(PROJECTION_PREFIXES)


def record_seq(value: Any) -> int:
    """The sequence a stored record reflects (``last_seq`` of a state, ``seq`` otherwise)."""
    if not isinstance(value, dict):
        return 0
    return int(value.get("last_seq") or value.get("seq") or 0)


def encode(value: Any) -> bytes:
    """The stored form of a record (the same as ``EventBus.kv_put``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def commit_record(envs: tuple[str, ...], seq: int) -> dict[str, Any]:
    return {"envs": list(envs), "seq": seq}


def records(projection: Projection) -> Stored:
    """Every key and value of a projection as the projector stores them."""
    out: Stored = {}
    for name, state in projection.envs.items():
        out[ENV_PREFIX + name] = state.to_dict()
    for name, history in projection.history.items():
        if history.seq:
            out[HISTORY_PREFIX + name] = history.to_dict()
    for sha, envs in projection.commits.items():
        out[COMMIT_PREFIX + sha] = commit_record(envs, projection.commit_seqs.get(sha, 0))
    if projection.seq:
        out[POSITION_KEY] = {"seq": projection.seq}
    return out


async def dump_bucket(bus: EventBus, bucket: str) -> Stored:
    """The projection keys of a bucket and their values (one ordered read of the bucket)."""
    raw = await bus.kv_snapshot(bucket)
    return {key: loads(value) for key, value in raw.items()
            if value and is_projection_key(key)}


def _retrying() -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception_type((nats.errors.TimeoutError, nats.errors.ConnectionClosedError,
                                       nats.js.errors.NoStreamResponseError,
                                       nats.errors.OutboundBufferLimitError)),
        wait=wait_exponential(multiplier=0.1, max=5), stop=stop_after_delay(WRITE_RETRY_FOR),
        reraise=True)


class Projector:
    def __init__(self, bus: EventBus, *, bucket: str = subjects.STATE_BUCKET,
                 durable: str = "projector") -> None:
        self.bus = bus
        self.bucket = bucket
        self.durable = durable
        self.envs: dict[str, EnvState] = {}
        self.history: dict[str, EnvHistory] = {}
        self.position = 0
        self._ahead = 0  # the highest sequence a stored record reflects (at load)
        self.changed = asyncio.Condition()
        # held while one event's records are written: a reader holding it sees a projection
        # that is exactly at ``position`` (``conveyor replay`` does)
        self.folding = asyncio.Lock()
        self._consumer: Consumer | None = None

    async def load(self) -> None:
        stored = await dump_bucket(self.bus, self.bucket)
        folded_from = await self.bus.kv_get(self.bucket, EPOCH_KEY)
        position = int((stored.get(POSITION_KEY) or {}).get("seq") or 0)
        foreign = folded_from is not None and folded_from[0] != self.bus.epoch
        if stored and (foreign or position > await self.bus.last_seq()):
            # folded from a log that is gone (wiped and re-created): none of it is true here
            log.warning("projector.log_reset", records=len(stored), position=position,
                        folded_from=folded_from[0] if folded_from else None,
                        log_epoch=self.bus.epoch)
            for key in stored:
                await self.bus.kv(self.bucket).purge(key)
            stored = {}
        if folded_from is None or folded_from[0] != self.bus.epoch:
            await self._put(EPOCH_KEY, self.bus.epoch)
        states = [EnvState.from_dict(v) for k, v in stored.items() if k.startswith(ENV_PREFIX)]
        for state in sorted(states, key=lambda s: s.last_seq):  # see ``changed_since``
            self.envs[state.name] = state
        for key, value in stored.items():
            if key.startswith(HISTORY_PREFIX):
                self.history[key.removeprefix(HISTORY_PREFIX)] = EnvHistory.from_dict(value)
            elif key == POSITION_KEY:
                self.position = int(value.get("seq") or 0)
        self._ahead = max((record_seq(v) for k, v in stored.items() if k != POSITION_KEY),
                          default=0)

    def changed_since(self, seq: int) -> list[EnvState]:
        """The environments whose state changed after sequence ``seq``, newest change first.

        ``envs`` is kept in the order of the states' ``last_seq`` (loaded sorted, and a state
        that changes moves to the end), so this reads only the changed ones: a dashboard's
        stream asks it after every event folded, at any fleet size."""
        out: list[EnvState] = []
        for name in reversed(self.envs):
            state = self.envs[name]
            if state.last_seq <= seq:
                break
            out.append(state)
        return out

    async def complete_cut_short(self) -> int:
        """Fold again the events a crash left half-written (records past ``position``).

        One event is in flight at a time (``max_ack_pending=1``), so this is at most the event
        at ``position + 1``; the records it already reached skip it. Returns events folded."""
        done = 0
        async with self.folding:
            for seq in range(self.position + 1, self._ahead + 1):
                try:
                    stored = await self.bus.get_event(seq)
                except (ValueError, KeyError, TypeError):  # not an event: nothing to fold
                    continue
                if stored is not None:
                    await self._fold(Delivery(stored.event, seq, 1))
                    done += 1
            if self._ahead > self.position:  # the rest was removed by retention meanwhile
                await self._put(POSITION_KEY, {"seq": self._ahead})
                self.position = self._ahead
        if done:
            log.warning("projector.completed_cut_short", events=done, position=self.position)
        return done

    async def start(self) -> None:
        await self.load()
        await self.complete_cut_short()  # before anyone reads: see the module docstring
        self._consumer = Consumer(self.bus, ConsumerSpec(
            durable=self.durable, stage="project", filters=[subjects.ALL_EVENTS],
            handler=self.handle, max_deliver=100, concurrency=1, key=lambda e: "all",
            # the projection in the bucket is the snapshot: a durable made anew (first start,
            # or removed meanwhile) starts after it instead of re-reading the log from 1
            start_seq=self.position + 1,
            # the dead process's unacked event blocks the lane until it is redelivered: after a
            # crash the projection resumes this soon (a live handler keeps it with in_progress)
            ack_wait=ACK_WAIT,
            # one unacked event at a time: after a crash the dead process's events come back
            # before any later one is delivered (otherwise ``position`` would skip them)
            max_ack_pending=1))
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def _put(self, key: str, value: Any) -> None:
        async for attempt in _retrying():
            with attempt:
                await self.bus.kv_put(self.bucket, key, value)

    async def _get(self, key: str) -> Any:
        async for attempt in _retrying():
            with attempt:
                found = await self.bus.kv_get(self.bucket, key)
        return found[0] if found else None

    async def handle(self, delivery: Delivery) -> Outcome:
        async with self.folding:
            await self._fold(delivery)
        async with self.changed:
            self.changed.notify_all()
        return Ack()

    async def _fold(self, delivery: Delivery) -> None:
        event, seq = delivery.event, delivery.seq
        if seq <= self.position:
            return  # already folded (a redelivery after a crash or a restart)
        if event.subject != ev.NO_ENV:
            commit: dict[str, Any] = {}
            if detects_commit(event):
                commit = await self._get(COMMIT_PREFIX + event.correlationid) or {}
            before = Records(self.envs.get(event.subject) or EnvState(name=event.subject),
                             self.history.get(event.subject) or EnvHistory(),
                             tuple(commit.get("envs") or ()), int(commit.get("seq") or 0))
            after, plan = writes(before, event, seq)
            for key, value in plan:
                await self._put(key, value)
                if key.startswith(HISTORY_PREFIX):
                    self.history[event.subject] = after.history
                elif key.startswith(ENV_PREFIX):
                    self.envs.pop(event.subject, None)  # to the end: see ``changed_since``
                    self.envs[event.subject] = after.state
        await self._put(POSITION_KEY, {"seq": seq})
        self.position = seq


def detects_commit(event: Event) -> bool:
    return event.type == ev.COMMIT_DETECTED and bool(event.correlationid)


def writes(before: Records, event: Event, seq: int) -> tuple[Records, list[tuple[str, Any]]]:
    """The records after ``event`` and the writes that store them (only the changed ones).

    Every record carries its own sequence, so these writes may be cut short by a crash at any
    point and redone by a redelivery; ``position`` goes after all of them."""
    after = fold_records(before, event, seq)
    name = event.subject
    plan: list[tuple[str, Any]] = []
    if after.history != before.history:
        plan.append((HISTORY_PREFIX + name, after.history.to_dict()))
    if detects_commit(event) and after.commit_seq != before.commit_seq:
        plan.append((COMMIT_PREFIX + event.correlationid,
                     commit_record(after.commit_envs, after.commit_seq)))
    if after.state != before.state:
        plan.append((ENV_PREFIX + name, after.state.to_dict()))
    return after, plan
