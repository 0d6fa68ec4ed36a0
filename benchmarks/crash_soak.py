"""Crash soak: the event log's promises after a SIGKILL, tried black-box as a new user would.

Run: ``python -m benchmarks.crash_soak --runs 50 [--mode up|services|both] [--seed N]``

Each run, on a fresh two-environment repository (plain YAML, git targets ``deploy/dev`` and
``deploy/prod``, a webhook notifier posting to a recording listener on loopback):

1. start Conveyor: ``conveyor up`` (mode ``up``), or one ``conveyor run SERVICE`` process per
   service against one nats-server (mode ``services``); wait for the first commit's outcomes;
2. six commits to ``envs/dev``, a few hundred ms apart, each followed by
   ``POST /api/v1/refresh``; at a random point of that burst SIGKILL ``up`` (or one random
   service) and start it again on the same data dir;
3. wait until the newest commit is applied to ``deploy/dev``, then ``conveyor replay --api URL``
   (the system is still running: redeliveries after the kill may still be arriving);
4. wait (bounded) for every detected commit to reach its outcome, and replay once more.

It prints, over all runs: runs, commits, commits without a terminal event, commits with more
than one, replay mismatches, and what the listener received more than once:

- *unrecognisable duplicates*: one fact (type, environment, commit, cause) under two CloudEvent
  ids, which no receiver can tell apart from two facts: must be 0;
- *same-id redeliveries*: an id posted again. Each must carry ``X-Conveyor-Redelivery`` (the
  notifier knew an earlier attempt may have arrived: "unflagged" counts those that did not) and
  have a SIGKILL of the sender between the two POSTs ("unexplained" counts those that did not):
  a sender killed after the listener answered but before it recorded the delivery must send
  again, and says so. Both must be 0; the redeliveries themselves are as rare as the window
  between the listener's answer and the record (a few ms per notification).

A run with any repeated POST keeps its directory, with ``receiver.jsonl`` (every POST: id,
type, subject, redelivery header, time) beside the services' logs (``notify.recorded`` /
``notify.resending`` lines), to see where the kill fell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from orchestrator.adapters import nats_auth
from orchestrator.adapters.embedded_nats import free_port
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.domain.trace import parse_time
from tests.support.crash import (
    NatsProcess,
    ServiceProcess,
    WebhookReceiver,
    conveyor_binary,
    last_log_line,
)
from tests.support.repos import Repo

ENVS = ("dev", "prod")
SERVICES = ("api", "notifier", "applier", "renderer", "git-watcher")
COMMITS = 6
TERMINAL = frozenset({ev.APPLY_SUCCEEDED, ev.APPLY_FAILED, ev.APPLY_SKIPPED,
                      ev.APPLY_SUPERSEDED, ev.APPLY_DEAD, ev.RENDER_FAILED, ev.RENDER_DEAD,
                      ev.COMMIT_REJECTED})
CONFIG = "environments:\n" + "".join(
    f"  {e}:\n    path: envs/{e}\n    target:\n      git:\n        branch: deploy/{e}\n"
    for e in ENVS) + (
    "notifiers:\n  hook:\n    type: webhook\n    url: ${HOOK_URL}\n"
    "    events: [\"conveyor.apply.*\", \"conveyor.render.*\"]\n")
APPLIED_TIMEOUT = 90.0  # newest commit on deploy/dev after the restart
SETTLE_TIMEOUT = 90.0  # every detected commit's outcome (redeliveries wait out ack_wait)


def manifest(env: str, n: int) -> str:
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {env}\n"
            f"data:\n  revision: \"{n}\"\n")


@dataclass
class RunResult:
    run: int
    mode: str
    killed: str
    killed_after: float  # seconds into the burst
    commits: int
    without_terminal: list[str] = field(default_factory=list)  # "sha7:env: chain"
    more_than_one: list[str] = field(default_factory=list)
    replay_mismatches: list[str] = field(default_factory=list)  # replay outputs that differed
    duplicates: int = 0  # same-id redeliveries
    unexplained_duplicates: int = 0  # ... with no kill of the sender between the two POSTs
    unflagged_duplicates: int = 0  # ... without X-Conveyor-Redelivery
    unrecognisable_duplicates: int = 0  # one fact under two ids
    missing_notifications: int = 0  # outcomes the listener never received
    linger: float = 0.0  # seconds from the newest commit's apply to the last outcome
    error: str = ""  # the run itself failed (Conveyor did not start, or restart...)
    seconds: float = 0.0


@dataclass
class Totals:
    runs: int = 0
    commits: int = 0
    commits_without_terminal_event: int = 0
    commits_with_several_terminal_events: int = 0
    replay_mismatches: int = 0
    unrecognisable_duplicate_deliveries: int = 0
    same_id_redeliveries: int = 0
    unexplained_duplicate_deliveries: int = 0
    unflagged_redeliveries: int = 0
    missing_notifications: int = 0
    longest_linger_seconds: float = 0.0
    runs_that_failed: int = 0

    def add(self, r: RunResult) -> None:
        self.runs += 1
        self.commits += r.commits
        self.commits_without_terminal_event += len(r.without_terminal)
        self.commits_with_several_terminal_events += len(r.more_than_one)
        self.replay_mismatches += len(r.replay_mismatches)
        self.unrecognisable_duplicate_deliveries += r.unrecognisable_duplicates
        self.same_id_redeliveries += r.duplicates
        self.unexplained_duplicate_deliveries += r.unexplained_duplicates
        self.unflagged_redeliveries += r.unflagged_duplicates
        self.missing_notifications += r.missing_notifications
        self.longest_linger_seconds = max(self.longest_linger_seconds, r.linger)
        self.runs_that_failed += bool(r.error)


class System:
    """Conveyor as processes: ``up``, or one process per service against one nats-server."""

    def __init__(self, mode: str, root: Path, hook_url: str) -> None:
        self.mode = mode
        self.root = root
        self.hook_url = hook_url
        self.api_port = free_port()
        self.nats: NatsProcess | None = None
        self.procs: dict[str, ServiceProcess] = {}
        self.kills: list[tuple[float, str]] = []

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def notifier(self) -> str:
        return "up" if self.mode == "up" else "notifier"

    def nats_url(self) -> str:
        if self.nats is not None:
            return self.nats.url
        ready = last_log_line(self.procs["up"].log_path, "embedded_nats.ready")
        assert ready is not None, "conveyor up never said where its nats-server listens"
        # the embedded server wants the user and password ``up`` keeps in its data dir
        creds = nats_auth.load_or_create(self.root / "data" / "nats")
        return nats_auth.with_credentials(str(ready["url"]), creds.user, creds.password)

    async def start(self, repo: Path) -> None:
        env = {"HOOK_URL": self.hook_url}
        allow = ["--env-allow", "HOOK_URL"]  # the notifier's ${HOOK_URL}, allowed by the operator
        if self.mode == "up":
            self.procs["up"] = ServiceProcess("up", [
                conveyor_binary(), "up", "--repo", str(repo), "--data-dir",
                str(self.root / "data"), "--listen", f"127.0.0.1:{self.api_port}", *allow,
            ], self.root / "up.log", env=env, ready_count=len(SERVICES))
            await self.procs["up"].start()
            return
        self.nats = NatsProcess(self.root / "nats")
        await self.nats.start()
        for name in SERVICES:
            listen = self.api_port if name == "api" else free_port()
            self.procs[name] = ServiceProcess(name, [
                conveyor_binary(), "run", name, "--nats", self.nats.url, "--repo", str(repo),
                "--data-dir", str(self.root / "data" / name), "--listen", f"127.0.0.1:{listen}",
                *allow,
            ], self.root / f"{name}.log", env=env)
            await self.procs[name].start()

    async def kill_and_restart(self, name: str) -> None:
        await self.procs[name].kill()
        # the time once it is reaped: a POST it sent before dying has reached the listener by
        # then (the listener runs in this loop and may log it only after the SIGKILL was sent)
        self.kills.append((time.monotonic(), name))
        await self.procs[name].start()

    async def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            with contextlib.suppress(Exception):
                await proc.terminate(timeout=20)
        if self.nats is not None:
            await self.nats.stop()


async def follow(url: str, predicate: Callable[[list[tuple[int, Event]]], bool],
                 timeout: float) -> tuple[bool, list[tuple[int, Event]]]:
    """Read the log from the start until ``predicate`` holds or ``timeout``; (held, events)."""
    seen: list[tuple[int, Event]] = []
    bus = await EventBus.connect(url, name="crash-soak")

    async def run() -> None:
        while True:
            try:
                start = seen[-1][0] + 1 if seen else 1
                if predicate(seen):
                    return
                async with contextlib.aclosing(bus.read(start_seq=start,
                                                        stop_at_end=False)) as events:
                    async for stored in events:
                        seen.append((stored.seq, stored.event))
                        if predicate(seen):
                            return
            except Exception as exc:  # a busy server timing a read out: read on
                print(f"  follow: read interrupted ({exc!r}); resuming", file=sys.stderr)

    try:
        async with asyncio.timeout(timeout):
            await run()
        return True, seen
    except TimeoutError:
        return False, seen
    finally:
        await bus.close()


def outcomes(events: list[tuple[int, Event]]) -> dict[tuple[str, str], list[str]]:
    """(commit, env) -> the chain of its event types, for every detected pair."""
    chains: dict[tuple[str, str], list[str]] = {}
    for _, e in events:
        if e.subject == ev.NO_ENV or not e.correlationid:
            continue
        pair = (e.correlationid, e.subject)
        if e.type == ev.COMMIT_DETECTED or pair in chains:
            chains.setdefault(pair, []).append(e.type)
    return chains


def linger(events: list[tuple[int, Event]], pairs: set[tuple[str, str]], newest: str) -> float:
    """Seconds from the newest commit's ``apply.succeeded`` on dev to the last outcome of any
    commit: how long an older commit went on waiting after the newest was deployed."""
    def at(e: Event) -> float:
        parsed = parse_time(e.time)
        return parsed.timestamp() if parsed is not None else 0.0

    times = [at(e) for _, e in events
             if e.type in TERMINAL and (e.correlationid, e.subject) in pairs]
    applied = [at(e) for _, e in events if e.type == ev.APPLY_SUCCEEDED
               and e.correlationid == newest and e.subject == "dev"]
    if not times or not applied:
        return 0.0
    return round(max(0.0, max(times) - min(applied)), 2)


def terminal_count(chain: list[str]) -> int:
    return sum(t in TERMINAL for t in chain)


async def refresh(session: aiohttp.ClientSession, api: str) -> None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):  # down while killed
        async with session.post(api + "/api/v1/refresh",
                                timeout=aiohttp.ClientTimeout(total=3)) as resp:
            await resp.read()


async def replay(api: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        conveyor_binary(), "replay", "--api", api, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode(errors="replace")


async def one_run(n: int, mode: str, rng: random.Random, root: Path) -> RunResult:
    started = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    repo = Repo(root / "repo")
    first = repo.commit({"conveyor.yaml": CONFIG,
                         **{f"envs/{e}/settings.yaml": manifest(e, 0) for e in ENVS}}, "initial")
    receiver = WebhookReceiver()
    await receiver.start()
    system = System(mode, root, receiver.url)
    victim = "up" if mode == "up" else rng.choice(SERVICES)
    result = RunResult(n, mode, victim, 0.0, 0)
    try:
        await system.start(repo.path)
        done, _ = await follow(system.nats_url(), lambda seen: all(
            terminal_count(outcomes(seen).get((first, e), [])) for e in ENVS), APPLIED_TIMEOUT)
        if not done:
            raise RuntimeError(f"run {n}: the first commit never deployed (see {root})")
        shas: list[str] = []
        gaps = [rng.uniform(0.2, 0.4) for _ in range(COMMITS)]
        kill_at = rng.uniform(0.0, sum(gaps))
        burst_start = time.monotonic()

        async def killer() -> None:
            await asyncio.sleep(kill_at)
            result.killed_after = round(time.monotonic() - burst_start, 2)
            await system.kill_and_restart(victim)

        kill_task = asyncio.create_task(killer())
        async with aiohttp.ClientSession() as session:
            for i, gap in enumerate(gaps, start=1):
                shas.append(repo.commit({"envs/dev/settings.yaml": manifest("dev", i)},
                                        f"dev change {i}"))
                await refresh(session, system.api)
                await asyncio.sleep(gap)
        await kill_task
        newest = shas[-1]
        pairs = {(first, e) for e in ENVS} | {(s, "dev") for s in shas}
        result.commits = len(shas)
        url = system.nats_url()
        applied, _ = await follow(url, lambda seen: any(
            e.type == ev.APPLY_SUCCEEDED and e.correlationid == newest and e.subject == "dev"
            for _, e in seen[-50:]), APPLIED_TIMEOUT)
        log = repo.log("deploy/dev")
        if not applied or not log or f"Conveyor-Source-Commit: {newest}" not in log[0]:
            result.without_terminal.append(f"{newest[:7]}:dev: newest never applied")
        code, out = await replay(system.api)
        if code != 0:
            result.replay_mismatches.append(f"while settling (exit {code}): {out.strip()}")

        def settled(seen: list[tuple[int, Event]]) -> bool:
            chains = outcomes(seen)
            return all(terminal_count(chains.get(p, [])) for p in pairs)

        _, events = await follow(url, settled, SETTLE_TIMEOUT)
        chains = outcomes(events)
        result.linger = linger(events, pairs, newest)
        for sha, env in sorted(pairs):
            chain = chains.get((sha, env), [])
            count = terminal_count(chain)
            label = f"{sha[:7]}:{env}: {' '.join(t.removeprefix('conveyor.') for t in chain)}"
            if count == 0:
                result.without_terminal.append(label)
            elif count > 1:
                result.more_than_one.append(label)
        code, out = await replay(system.api)
        if code != 0:
            result.replay_mismatches.append(f"settled (exit {code}): {out.strip()}")
        notified = {e.id for _, e in events if e.subject in ENVS and (
            e.type.startswith("conveyor.apply.") or e.type.startswith("conveyor.render."))
            and e.type not in (ev.APPLY_STARTED, ev.APPLY_RETRYING)}
        with contextlib.suppress(AssertionError):
            await receiver.wait_for(notified, timeout=30)
        result.missing_notifications = len(notified - receiver.posts.keys())
        result.duplicates = sum(n - 1 for n in receiver.duplicates().values())
        result.unexplained_duplicates = sum(
            n - 1 for n in receiver.unexplained_duplicates(system.kills,
                                                           system.notifier).values())
        result.unflagged_duplicates = sum(receiver.unflagged_repeats().values())
        result.unrecognisable_duplicates = sum(n - 1 for n in receiver.unrecognisable().values())
        if result.duplicates or result.unrecognisable_duplicates:
            receiver.dump(root / "receiver.jsonl")
            (root / "kills.json").write_text(json.dumps(
                [{"at": round(at, 4), "name": name} for at, name in system.kills]))
    finally:
        await system.stop()
        await receiver.stop()
    result.seconds = round(time.monotonic() - started, 1)
    return result


def problem(r: RunResult) -> bool:
    """A broken promise (a same-id redelivery after a kill of its sender, flagged, is not)."""
    return bool(r.without_terminal or r.more_than_one or r.replay_mismatches
                or r.unexplained_duplicates or r.unflagged_duplicates
                or r.unrecognisable_duplicates or r.missing_notifications or r.error)


async def soak(runs: int, mode: str, seed: int, workdir: Path, *, keep: bool = False,
               echo: Callable[[str], None] = print) -> tuple[Totals, list[RunResult]]:
    rng = random.Random(seed)
    totals = Totals()
    results: list[RunResult] = []
    for n in range(1, runs + 1):
        root = workdir / f"{mode}-{n}"
        try:
            result = await one_run(n, mode, rng, root)
        except Exception as exc:  # counted, and the soak goes on
            result = RunResult(n, mode, "?", 0.0, 0, error=f"{type(exc).__name__}: {exc}")
        totals.add(result)
        results.append(result)
        bad = problem(result)
        echo(f"[{mode} {n}/{runs}] killed {result.killed} at {result.killed_after}s: "
             f"{'PROBLEM ' + json.dumps(asdict(result)) if bad else 'ok'} "
             f"(outcomes done {result.linger}s after the newest was applied; "
             f"run {result.seconds}s)")
        if not bad and not result.duplicates and not keep:
            shutil.rmtree(root, ignore_errors=True)
    return totals, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--mode", choices=("up", "services", "both"), default="both")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep every run's directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-crash-soak-"))
    print(f"working in {workdir} (runs with a problem are kept)")
    failed = False
    for mode in (("up", "services") if args.mode == "both" else (args.mode,)):
        totals, _ = asyncio.run(soak(args.runs, mode, args.seed, workdir, keep=args.keep))
        print(f"{mode}: " + ", ".join(f"{k.replace('_', ' ')}: {v}"
                                      for k, v in asdict(totals).items()))
        failed = failed or any(v for k, v in asdict(totals).items() if k not in (
            "runs", "commits", "same_id_redeliveries", "longest_linger_seconds"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
