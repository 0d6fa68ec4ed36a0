"""Reading the event log: the newest event of a subject, one by sequence, a snapshot or
followed read through an ephemeral ordered consumer, and the durable consumers' backlog."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from nats.aio.msg import Msg
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from orchestrator import subjects
from orchestrator.adapters.nats_core import BusCore, StoredEvent
from orchestrator.domain.events import Event

LAST_EVENTS_KEPT = 256  # subjects whose newest event stays decoded (last_event)


def delivered_at(msg: Msg) -> tuple[int, int]:
    """A JetStream delivery's stream sequence and how many messages are pending after it.

    Read straight from the reply subject (``$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.
    <cseq>.<time>.<pending>``) for the common form, without building nats-py's ``Metadata``
    (a datetime per message: a tenth of a replay's read); any other form through it."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[8])
    meta = msg.metadata
    return meta.sequence.stream, meta.num_pending


class EventReads(BusCore):
    """The reading part of ``EventBus``."""

    async def last_event(self, env: str, event_type: str) -> StoredEvent | None:
        subject = subjects.event_subject(env, event_type)
        try:
            raw = await self._retrying(lambda: self.data.get_last_msg(
                subjects.STREAM, subject, direct=True))
        except NotFoundError:
            return None
        assert raw.data is not None and raw.seq is not None
        known = self._last.get(subject)
        if known is not None and known.seq == raw.seq:
            return known
        stored = StoredEvent(raw.seq, Event.from_json(raw.data))
        if len(self._last) >= LAST_EVENTS_KEPT:
            self._last.clear()
        self._last[subject] = stored
        return stored

    async def get_event(self, seq: int) -> StoredEvent | None:
        try:
            raw = await self._retrying(lambda: self.data.get_msg(subjects.STREAM, seq=seq))
        except NotFoundError:
            return None
        assert raw.data is not None
        return StoredEvent(seq, Event.from_json(raw.data))

    async def last_seq(self) -> int:
        info = await self.js.stream_info(subjects.STREAM)
        return int(info.state.last_seq)

    async def read(self, filters: Sequence[str] | None = None, *, start_seq: int = 1,
                   stop_at_end: bool = True, batch: int = 500,
                   idle: float = 0.5) -> AsyncIterator[StoredEvent]:
        """Events in stream order via an ephemeral ordered consumer.

        With ``stop_at_end`` it stops at the stream's last sequence as of the call (a snapshot
        read, used by queries and replay); otherwise it follows the log for ever.
        """
        end = await self.last_seq() if stop_at_end else None
        if end is not None and end < start_seq:
            return
        fl = list(filters or [subjects.ALL_EVENTS])
        config = jsapi.ConsumerConfig(
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start_seq),
            ack_policy=jsapi.AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True,
            filter_subjects=fl if len(fl) > 1 else None,
            filter_subject=fl[0] if len(fl) == 1 else None,
        )
        sub = await self.js.pull_subscribe(fl[0], stream=subjects.STREAM, config=config)
        try:
            if end is not None and (await sub.consumer_info()).num_pending == 0:
                return
            while True:
                try:
                    msgs = await sub.fetch(batch, timeout=idle)
                except TimeoutError:  # nats.errors.TimeoutError, or asyncio's own under load
                    continue  # following the log: nothing new yet
                for msg in msgs:
                    meta = msg.metadata
                    seq = meta.sequence.stream
                    if end is not None and seq > end:
                        return
                    yield StoredEvent(seq, Event.from_json(msg.data))
                    # num_pending counts matching messages after this one: 0 = end of snapshot
                    if end is not None and (seq >= end or meta.num_pending == 0):
                        return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def consumer_pending(self) -> dict[str, int]:
        """Messages each durable consumer of the stream has still to finish (pending plus
        awaiting ack); ephemeral readers are not queues and are left out."""
        infos = await self.js.consumers_info(subjects.STREAM)
        return {
            str(info.config.durable_name): int(info.num_pending or 0)
            + int(info.num_ack_pending or 0)
            for info in infos if info.config.durable_name
        }
