"""``conveyor replay``: rebuild every projection from the log and compare it with the live one.

The log is the system of record; the state bucket is a cache of folds over it. Replay proves
it: take a consistent snapshot of the live projection at its position ``P``, fold events
``1..P`` in memory with the same rule the projector uses, and compare key by key the records
that fold gives, in the form the projector stores them (``projector.encode``, read back as a
bucket read gives them), with the live ones. Replay only folds: no handler runs, nothing is
published or written, no effect is repeated.

(It used to write the fold into a fresh bucket and read that back: the same comparison, at
the cost of a publish and a read per key, a third of a replay's time.)

A consistent snapshot: in the api process (``POST /api/v1/replay``) the projector's lock is
held while the live keys are read, so no event is half-written (and an event a crash cut short
was completed by the projector before the api began to serve: see ``orchestrator.projector``).
Should a record still be past the position (a write the projector could not store, to be
redone), replay says so instead of reporting differences. Run directly against NATS
(``--nats``) there is no lock: the position is read before and after the keys, and the read is
repeated until both agree and no record is ahead of it (every record carries the sequence it
reflects, so a half-written event shows).

Exit status: 0 equal, 1 differences (listed), 2 unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.aio.msg import Msg
from nats.js import api as jsapi

from orchestrator import subjects
from orchestrator.adapters import nats_auth
from orchestrator.adapters.nats_bus import (
    EventBus,
    delivered_at,
    inbox_of,
    is_auth_error,
    redact,
    server_list,
    unauthorized,
)
from orchestrator.commands.client import _fail_unreachable, _headers
from orchestrator.domain.events import Event, loads
from orchestrator.domain.state import Projection, project
from orchestrator.errors import PermanentError
from orchestrator.projector import (
    POSITION_KEY,
    Stored,
    dump_bucket,
    encode,
    record_seq,
    records,
)

MAX_DIFFERENCES = 200
READ_IDLE = 30.0  # seconds without a message before a replay read gives up
SNAPSHOT_ATTEMPTS = 100
SNAPSHOT_BACKOFF_MAX = 0.5  # seconds between two snapshot attempts, at most


class ReplayError(Exception):
    """Replay could not take a consistent snapshot or read the log."""


@dataclass(frozen=True, slots=True)
class Difference:
    key: str
    path: str  # "" = the whole key; else the field, e.g. ``entries[3].outcome``
    live: Any
    replayed: Any

    def describe(self) -> str:
        where = f"{self.key} {self.path}".strip()
        if self.live is None and self.path == "":
            return f"{where}: missing from the live projection"
        if self.replayed is None and self.path == "":
            return f"{where}: in the live projection but not produced by replay"
        return f"{where}: live {_short(self.live)} != replayed {_short(self.replayed)}"


@dataclass(frozen=True, slots=True)
class ReplayReport:
    seq: int  # the live position compared at
    first_seq: int  # the stream's first sequence (> 1: retention removed older events)
    events: int  # events folded
    keys: int  # keys in the rebuilt projection
    seconds: float
    differences: list[Difference] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "equal": self.equal,
                "differences": [{**asdict(d), "description": d.describe()}
                                for d in self.differences]}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def diff(live: Stored, replayed: Stored, limit: int = MAX_DIFFERENCES) -> list[Difference]:
    """Key-by-key differences, with the paths of differing fields."""
    out: list[Difference] = []
    for key in sorted(set(live) | set(replayed)):
        if key not in live or key not in replayed:
            out.append(Difference(key, "", live.get(key), replayed.get(key)))
        else:
            _diff_value(key, "", live[key], replayed[key], out)
        if len(out) >= limit:
            break
    return out[:limit]


def _diff_value(key: str, path: str, a: Any, b: Any, out: list[Difference]) -> None:
    if a == b:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            _diff_value(key, f"{path}.{k}" if path else str(k), a.get(k), b.get(k), out)
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff_value(key, f"{path}[{i}]", x, y, out)
        return
    out.append(Difference(key, path or "", a, b))


def _seqs(stored: Stored) -> list[int]:
    return [record_seq(value) for key, value in stored.items() if key != POSITION_KEY]


async def _position(bus: EventBus, bucket: str) -> int:
    kv = await bus.js.key_value(bucket)
    try:
        entry = await kv.get(POSITION_KEY)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.NotFoundError):
        return 0
    return int(loads(entry.value or b"{}").get("seq") or 0)


async def snapshot(bus: EventBus, bucket: str = subjects.STATE_BUCKET,
                   lock: asyncio.Lock | None = None) -> tuple[int, Stored]:
    """The live projection and the position it is exactly at."""
    if lock is not None:
        async with lock:
            stored = await dump_bucket(bus, bucket)
        seq = int((stored.get(POSITION_KEY) or {}).get("seq") or 0)
        ahead = max(_seqs(stored), default=0)
        if ahead > seq:  # the projector failed to store an event and will fold it again
            raise ReplayError(f"the projection in {bucket} has records at sequence {ahead}, "
                              f"past its position {seq}: an event is still being stored; "
                              "try again")
        return seq, stored
    ahead = 0
    for attempt in range(SNAPSHOT_ATTEMPTS):
        before = await _position(bus, bucket)
        stored = await dump_bucket(bus, bucket)
        after = await _position(bus, bucket)
        ahead = max(_seqs(stored), default=0)
        if before == after and ahead <= before:
            return before, stored
        # the log is busy (a burst's notifications, say): back off until a read falls into a
        # pause between two events, rather than spending every attempt inside one burst
        await asyncio.sleep(min(SNAPSHOT_BACKOFF_MAX, 0.01 * 2 ** attempt))
    if before == after:  # still, with a record past it: an event cut short, not yet completed
        raise ReplayError(f"the projection in {bucket} has a record at sequence {ahead}, past "
                          f"its position {before}: its projector stopped half-way through an "
                          "event and completes it when it starts again")
    raise ReplayError(f"the projection in {bucket} kept moving: no consistent snapshot in "
                      f"{SNAPSHOT_ATTEMPTS} reads (replay through the api instead)")


def as_stored(projection: Projection) -> Stored:
    """The records of ``projection`` exactly as a read of the bucket holding them gives them
    back: each value stored by the projector's ``encode``, then parsed (tuples become lists)."""
    return {key: loads(encode(value)) for key, value in records(projection).items()}


async def rebuild(bus: EventBus, upto: int, chunk: int = 5000) -> tuple[Projection, int]:
    """Fold events ``1..upto`` of the stream (the same rule as the projector); and how many.

    Reads with an ordered push consumer (flow-controlled, no acks: the cheapest way nats-py
    reads a stream end to end), decoding and folding in batches while the next arrive.
    """
    projection, count = Projection(), 0
    info = await bus.js.stream_info(subjects.STREAM)
    if upto <= 0 or not info.state.messages or int(info.state.first_seq) > upto:
        return projection, 0
    batch: list[tuple[int, bytes]] = []
    ready, done = asyncio.Event(), asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        if done.is_set():
            return
        seq, pending = delivered_at(msg)
        if seq <= upto:
            batch.append((seq, msg.data))
        if seq >= upto or not pending:
            done.set()
        if len(batch) >= chunk or done.is_set():
            ready.set()

    sub = await bus.js.subscribe(subjects.ALL_EVENTS, stream=subjects.STREAM, cb=on_msg,
                                 ordered_consumer=True, deliver_policy=jsapi.DeliverPolicy.ALL,
                                 idle_heartbeat=5.0)
    try:
        while True:
            try:
                await asyncio.wait_for(ready.wait(), READ_IDLE)
            except TimeoutError:
                raise ReplayError(f"the log stopped arriving after {count + len(batch)} "
                                  f"events (expected up to sequence {upto})") from None
            ready.clear()
            items, batch[:] = batch[:], []
            projection = project(((seq, Event.from_json(data)) for seq, data in items),
                                 projection)
            count += len(items)
            if done.is_set() and not batch:
                return projection, count
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def replay(bus: EventBus, *, live_bucket: str = subjects.STATE_BUCKET,
                 lock: asyncio.Lock | None = None) -> ReplayReport:
    """Rebuild the projection from sequence 1 in memory and compare it with the live one."""
    started = time.monotonic()
    seq, live = await snapshot(bus, live_bucket, lock)
    info = await bus.js.stream_info(subjects.STREAM)
    first = int(info.state.first_seq or 1)
    projection, folded = await rebuild(bus, seq)
    replayed = as_stored(projection)
    return ReplayReport(seq=seq, first_seq=first, events=folded, keys=len(replayed),
                        seconds=round(time.monotonic() - started, 3),
                        differences=diff(live, replayed))


# -- the command ---------------------------------------------------------------------------------
def _print(report: dict[str, Any], output: str) -> int:
    if output == "json":
        print(json.dumps(report, indent=2))
        return 0 if report["equal"] else 1
    print(f"replayed {report['events']} events (sequence 1..{report['seq']}): "
          f"{report['keys']} keys in {report['seconds']:.2f}s")
    if report["first_seq"] > 1:
        print(f"warning: the stream starts at sequence {report['first_seq']}: older events "
              "were removed by retention and cannot be replayed", file=sys.stderr)
    if report["equal"]:
        print(f"the live projection matches the log at sequence {report['seq']}")
        return 0
    diffs = report["differences"]
    print(f"{len(diffs)} difference(s) between the live projection and the log"
          f"{' (first ' + str(MAX_DIFFERENCES) + ')' if len(diffs) >= MAX_DIFFERENCES else ''}:")
    for d in diffs:
        print(f"  {d['description']}")
    return 1


async def _direct(url: str) -> dict[str, Any]:
    # no EventBus.connect: that reconciles the stream's config (retention) with defaults
    refused: list[Exception] = []

    async def quiet(exc: Exception) -> None:  # the failure is reported once, by the caller
        if is_auth_error(exc):
            refused.append(exc)

    try:
        nc = await nats.connect(servers=server_list(url), name="conveyor-replay",
                                connect_timeout=5, allow_reconnect=False, error_cb=quiet,
                                inbox_prefix=inbox_of(url))
    except Exception as exc:
        if refused or is_auth_error(exc):
            raise unauthorized(server_list(url)) from None
        raise
    try:
        bus = EventBus(nc, nc.jetstream(timeout=30))
        return (await replay(bus)).to_dict()
    finally:
        await nc.drain()


async def replay_command(args: argparse.Namespace) -> int:
    if args.nats:
        given = getattr(args, "data_dir", None)
        url = nats_auth.resolve(args.nats, os.environ, data_dir=Path(given) if given else None)
        try:
            report = await _direct(url)
        except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as exc:
            print(f"conveyor replay: cannot reach NATS at {redact(args.nats)}: {exc}",
                  file=sys.stderr)
            return 2
        except (ReplayError, PermanentError) as exc:  # PermanentError: credentials refused
            print(f"conveyor replay: {exc}", file=sys.stderr)
            return 2
        except nats.js.errors.NotFoundError as exc:  # no stream or no state bucket there
            print(f"conveyor replay: no Conveyor log or state at {redact(args.nats)} ({exc})",
                  file=sys.stderr)
            return 2
        return _print(report, args.output)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    try:
        async with aiohttp.ClientSession(headers=_headers(), timeout=timeout) as session, \
                session.post(args.api.rstrip("/") + "/api/v1/replay") as resp:
            body = await resp.json(content_type=None)
    except aiohttp.ClientError as exc:
        return _fail_unreachable(args.api, exc)
    if resp.status >= 400:
        print(f"conveyor replay: {resp.status} {body.get('error', body)}", file=sys.stderr)
        return 2
    return _print(body, args.output)
