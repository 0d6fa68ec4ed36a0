"""The projector: folds every event into environment state kept in the state bucket.

Each environment's state is stored with the stream sequence it reflects (``last_seq``); an event
at or below it was already folded (a redelivery after a crash) and is skipped, which keeps
counters exact under at-least-once delivery.
"""

from __future__ import annotations

import asyncio

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.state import EnvState, evolve
from orchestrator.runtime import Ack, Consumer, ConsumerSpec, Delivery, Outcome

ENV_PREFIX = "env."
COMMIT_PREFIX = "commit."


class Projector:
    def __init__(self, bus: EventBus, *, bucket: str = subjects.STATE_BUCKET,
                 durable: str = "projector") -> None:
        self.bus = bus
        self.bucket = bucket
        self.durable = durable
        self.envs: dict[str, EnvState] = {}
        self.changed = asyncio.Condition()
        self._consumer: Consumer | None = None

    async def load(self) -> None:
        kv = self.bus.kv(self.bucket)
        try:
            keys = await kv.keys()
        except Exception:  # nats raises NoKeysError on an empty bucket
            keys = []
        for key in keys:
            if key.startswith(ENV_PREFIX):
                found = await self.bus.kv_get(self.bucket, key)
                if found is not None:
                    self.envs[key.removeprefix(ENV_PREFIX)] = EnvState.from_dict(found[0])

    async def start(self) -> None:
        await self.load()
        self._consumer = Consumer(self.bus, ConsumerSpec(
            durable=self.durable, stage="project", filters=[subjects.ALL_EVENTS],
            handler=self.handle, max_deliver=100, concurrency=1, key=lambda e: "all"))
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def handle(self, delivery: Delivery) -> Outcome:
        event = delivery.event
        if event.subject == ev.NO_ENV:
            return Ack()
        state = self.envs.get(event.subject) or EnvState(name=event.subject)
        if delivery.seq <= state.last_seq:
            return Ack()  # already folded
        new = evolve(state, event, delivery.seq)
        await self.bus.kv_put(self.bucket, ENV_PREFIX + event.subject, new.to_dict())
        if event.type == ev.COMMIT_DETECTED and event.correlationid:
            key = COMMIT_PREFIX + event.correlationid
            found = await self.bus.kv_get(self.bucket, key)
            envs = sorted(set(found[0] if found else []) | {event.subject})
            await self.bus.kv_put(self.bucket, key, envs)
        self.envs[event.subject] = new
        async with self.changed:
            self.changed.notify_all()
        return Ack()
