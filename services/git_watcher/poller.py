"""One source, polled: fetch, decide, publish, advance the cursor.

(Over 400 lines on purpose: ``SourcePoller`` is one source's poll cycle, fetch to cursor write
and failure, and the crash reasoning below spans all of it; the pure decisions are already in
``decide`` and ``sources``, the cursor in ``cursor``.)

Each source has its own cursor in the state bucket (``watcher.<source>``, ``cursor.py``): the
last announced head, whether the source is failing (and why), whether its branch is gone, the
branch resolved when none was configured, and, for sources other than the primary, a digest of
each environment's conveyor.yaml block as of the last announcement (an environment whose block
changes is due the current head again). The primary's cursor also keeps the last good
conveyor.yaml text.

The cursor is written *after* the events are published. A crash in between re-announces the
same commits with the same deterministic ids, which JetStream drops inside its duplicate window
(``nats_schema.DUPLICATE_WINDOW``). A watcher that stayed down longer than the window would
announce them twice, so the first batch a poller publishes after it started (or after a cursor
write failed) is checked against the log first: the events the crashed attempt did publish are
a prefix of the batch (they go out one at a time, in order), found with a few reads of the last
message on an event's subject, and only the rest is published.

The cursor also records the log's epoch it was written under. A cursor of another log (the
stream was wiped and re-created, the state bucket survived) is not trusted: the source is
polled as on first sight, so the head is announced into the new log at once (and deployed by
digest, with one ``conveyor.log.reset`` from the applier) instead of at the next commit.

Failures: a fetch that fails publishes ``conveyor.source.fetch_failed`` once per outage (again
only if the reason changes), backs the source's polling off exponentially (see
``decide.backoff_delay``) and, on the first fetch that works again,
``conveyor.source.recovered``. Nothing else happens: no environment event, so what is applied
stays applied.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from orchestrator import subjects
from orchestrator.adapters import git_local, git_tree
from orchestrator.adapters.git_source import MirrorPool
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.codec import decode_as
from orchestrator.domain.config import (
    CONFIG_FILE,
    Config,
    EnvironmentConfig,
    VerifyConfig,
    parse_config,
)
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.generator_pulls import PullRequest
from orchestrator.domain.generators import wanted_pulls
from orchestrator.domain.payloads import CommitRejected, ConfigInvalid
from orchestrator.errors import ConfigError, ConveyorError, PermanentError, TransientError
from orchestrator.gitops.forge import PullLister
from orchestrator.metrics import Metrics
from orchestrator.rendering import referenced_paths
from orchestrator.secrets import SecretScope
from services.git_watcher import decide
from services.git_watcher.config_check import Bounds, check_config
from services.git_watcher.cursor import Cursor, cursor_key
from services.git_watcher.decide import SOURCE, Verdict, WatchedSource
from services.git_watcher.signing import check_commit

log = structlog.get_logger(__name__)

REFERENCE_MAX_BYTES = 8 << 20  # a kustomization read to find what an environment references


def referenced_at(repo_path: str, sha: str) -> decide.Referenced:
    """referenced_paths bound to one commit (kustomize bases and the like)."""
    def read(path: str) -> bytes | None:
        try:  # a huge file is the renderer's to refuse, with its own limit
            return git_local.read_file(repo_path, sha, path, max_bytes=REFERENCE_MAX_BYTES)
        except PermanentError:
            return None

    def is_dir(path: str) -> bool:
        return git_local.is_tree(repo_path, sha, path)

    def refs(env: EnvironmentConfig) -> frozenset[str]:
        try:
            return frozenset(referenced_paths(read, is_dir, env.path, env.render))
        except Exception:  # a broken kustomization is the renderer's to report
            return frozenset()

    return refs


@dataclass(frozen=True, slots=True)
class Announcement:
    events: list[Event]
    config_text: str | None  # primary: the config in force after the new commits
    last: str  # the newest commit announced: the head, or the end of a chunk of a burst
    config_dirs: tuple[str, ...] = ()  # and the directories its generators matched
    config_pulls: tuple[PullRequest, ...] = ()  # and the pull requests they used


class SourcePoller:
    """Polls one source. ``config()`` returns the configuration in force (from the primary)."""

    def __init__(self, bus: EventBus, source: WatchedSource, data_dir: Path, *,
                 interval: float, config: Callable[[], Config | None], mirrors: MirrorPool,
                 metrics: Metrics, scope: SecretScope | None = None,
                 local_dirs: tuple[str, ...] = (), pulls: PullLister | None = None) -> None:
        self.bus = bus
        self.metrics = metrics
        self.source = source
        self.interval = interval
        self.branch = source.branch
        self._config = config
        self.scope = scope if scope is not None else SecretScope({}, ())
        self.local_dirs = local_dirs  # --allow-local-path: what conveyor.yaml may name here
        self.pulls = pulls  # the forge's open pull requests (operator: CONVEYOR_FORGE_*)
        self.checkout = mirrors.shared(source.repo, data_dir, source=source.name,
                                        credentials=source.credentials, scope=scope)
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.failures = 0
        self.next_delay = 0.0
        self.last_error: ConveyorError | None = None
        self.checked = False  # the first batch after start was checked against the log

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def key(self) -> str:
        return cursor_key(self.source.name)

    def delay(self, rand: float | None = None) -> float:
        """How long to wait before the next poll: the interval, or the backoff when failing."""
        r = random.random() if rand is None else rand
        self.next_delay = decide.backoff_delay(self.failures, self.interval, r)
        return self.next_delay

    async def load_cursor(self) -> tuple[Cursor, int]:
        found = await self.bus.kv_get(subjects.STATE_BUCKET, self.key)
        if found is None:
            return Cursor(), 0
        raw, rev = found
        cursor = Cursor.from_json(raw)
        epoch = self.bus.epoch
        if cursor.epoch and epoch and cursor.epoch != epoch:
            # written for a log that is gone: what it says was announced is not in this one
            log.warning("watcher.log_reset", source=self.name, cursor_epoch=cursor.epoch,
                        log_epoch=epoch, head=(cursor.head or "")[:12])
            return Cursor(branch=cursor.branch), rev
        return cursor, rev

    async def poll(self) -> int:
        """Fetch, announce new commits, advance the cursor. Returns events published."""
        async with self.lock:
            cursor, rev = await self.load_cursor()
            if not self.branch and cursor.branch:
                self.branch = cursor.branch
            started = time.monotonic()
            try:
                fetched = await self.checkout.fetch(self.branch or None)
            except ConveyorError as exc:
                self.metrics.observe_fetch(self.name, time.monotonic() - started, exc.reason)
                self.failures += 1
                self.last_error = exc
                return await self._failed(cursor, rev, exc)
            self.metrics.observe_fetch(self.name, time.monotonic() - started)
            self.failures, self.last_error = 0, None
            if not self.branch and fetched.branch:
                self.branch = cursor.branch = fetched.branch
            events: list[Event] = []
            if cursor.failing:
                events.append(new_event(
                    ev.SOURCE_RECOVERED, env=ev.NO_ENV, source=SOURCE,
                    correlation=fetched.head or "", key=f"{self.name}:{rev}",
                    data={**self._data(), "after": cursor.reason}))
                cursor.failing, cursor.reason = False, ""
            head = fetched.head
            if head is None:
                if cursor.head is not None and not cursor.deleted:
                    events.append(new_event(
                        ev.SOURCE_BRANCH_DELETED, env=ev.NO_ENV, source=SOURCE,
                        correlation=cursor.head, key=f"{self.name}:{rev}",
                        data={**self._data(), "last_head": cursor.head}))
                    cursor.deleted = True
                return await self._commit(events, cursor, dirty=bool(events))
            if self.source.primary and self.pulls is not None:
                events.extend(await self._pull_requests(cursor))
            config = self._config()
            resumed = cursor.deleted
            cursor.deleted = False
            stale = (not self.source.primary and config is not None
                     and decide.stale_envs(config, self.name, cursor.envs))
            if head == cursor.head and not stale:
                return await self._commit(events, cursor, dirty=bool(events) or resumed)
            total = 0
            while True:  # a burst longer than MAX_WALK is announced chunk by chunk, in order
                found = await asyncio.to_thread(self._announce, cursor, head, config)
                events.extend(found.events)
                if self.source.primary:
                    cursor.config_text = found.config_text
                    cursor.config_dirs = found.config_dirs
                    cursor.config_pulls = found.config_pulls
                elif config is not None:
                    cursor.envs = {e.name: decide.env_digest(e)
                                   for e in decide.envs_of(config, self.name)}
                cursor.head = found.last
                total += await self._commit(events, cursor, dirty=True)
                events = []
                if found.last == head:
                    return total

    async def _pull_requests(self, cursor: Cursor) -> list[Event]:
        """Open or close the environments of pullRequests generators: the forge's open pull
        requests changed since the config in force was expanded. One ``config.loaded`` (about
        the config's commit) carries the new set; a closed pull request's environments get
        ``environment.removed``; a new one's source (``pr-<number>``) is polled from now on and
        announces its head. A forge that cannot be listed keeps the last set (and says why in
        the log): an outage never removes preview environments."""
        current = cursor.config()
        if current is None or not current.reads_pulls or cursor.head is None \
                or self.pulls is None:
            return []
        try:
            listed = await self.pulls.open_pulls()
        except ConveyorError as exc:
            log.warning("watcher.pull_requests_unlisted", source=self.name, reason=exc.reason,
                        error=str(exc))
            return []
        wanted = wanted_pulls(current.generators, listed, time.time())
        if wanted == current.pulls:
            return []
        info = git_local.commit_info(self.checkout.path, cursor.head)
        ref = self.source.ref(self.branch)
        try:
            after = parse_config(current.text, dirs=current.dirs, pulls=wanted)
            check_config(after)
        except ConfigError as err:
            return [decide.config_invalid(info, ref, err)]
        cursor.config_pulls = after.pulls
        digest = hashlib.sha256(json.dumps([p.to_dict() for p in wanted],
                                           sort_keys=True).encode()).hexdigest()[:16]
        loaded = new_event(ev.CONFIG_LOADED, env=ev.NO_ENV, correlation=info.sha, source=SOURCE,
                           key=f"{self.name}:pulls:{digest}", data={
                               **decide.commit_data(info, ref), "text": after.text,
                               "environments": sorted(after.environments),
                               "dirs": list(after.dirs),
                               "pulls": [p.to_dict() for p in after.pulls]})
        log.info("watcher.pull_requests", source=self.name,
                 open=[p.number for p in wanted], was=[p.number for p in current.pulls])
        return [loaded, *decide.removed_envs(current, after, info, ref)]

    def _data(self) -> dict[str, Any]:
        return {"source": self.name, "repo": self.checkout.mirror.display_url,
                "branch": self.branch}

    # ------------------------------------------------------------------ worker thread

    def _verdict(self, path: str, sha: str) -> decide.VerdictFor:
        """The commit's checks, run at most once (the signature check spawns tools): its tree
        must be safe to check out (no ``..``, ``.git``, ``/``, duplicates: what ``git fsck``
        rejects), then its signature must satisfy the policy."""
        cache: dict[str, Verdict | None] = {}

        def verdict(policy: VerifyConfig | None) -> Verdict | None:
            if "v" not in cache:
                problem = git_tree.unsafe_entry(path, sha)
                cache["v"] = (Verdict(False, "UnsafeTree", f"the tree holds {problem}")
                              if problem is not None
                              else check_commit(path, sha, policy, scope=self.scope))
            return cache["v"]

        return verdict

    def _own_verdict(self, path: str, sha: str) -> Callable[[], Verdict | None]:
        """A secondary source's check: under its own ``verify`` policy."""
        verdict = self._verdict(path, sha)
        policy = self.source.verify
        return lambda: verdict(policy)

    def _announce(self, cursor: Cursor, head: str, config: Config | None) -> Announcement:
        """Blocking: walk the new commits and decide their events (runs in a thread)."""
        path = self.checkout.path
        ref = self.source.ref(self.branch)
        extra = {"source_config": {**self.source.event_config(), "branch": self.branch}}
        events: list[Event] = []
        rewritten = cursor.head is not None and cursor.head != head and (
            not git_local.has_commit(path, cursor.head)
            or not git_local.is_ancestor(path, cursor.head, head))
        if rewritten:
            events.append(new_event(ev.SOURCE_REWRITTEN, env=ev.NO_ENV, source=SOURCE,
                                    correlation=head, key=self.name,
                                    data={**self._data(), "old_head": cursor.head,
                                          "new_head": head}))
        if head == cursor.head:
            commits = []
        else:
            commits = git_local.new_commits(path, None if rewritten else cursor.head, head)
        first_sight = cursor.head is None or rewritten
        if self.source.primary:
            current: Config | None = cursor.config()
            text_after, dirs_after = cursor.config_text, cursor.config_dirs
            pulls_after = cursor.config_pulls
            for i, commit in enumerate(commits):
                changed = None if (first_sight and i == 0) else git_local.changed_paths(
                    path, commit.sha)

                def text(sha: str = commit.sha) -> str | None:
                    try:  # the size is checked from the object header, before reading
                        data = git_local.read_file(path, sha, CONFIG_FILE,
                                                   max_bytes=decide.MAX_CONFIG_BYTES)
                    except PermanentError as exc:
                        raise ConfigError(exc.message, file=CONFIG_FILE) from None
                    return None if data is None else data.decode("utf-8", errors="replace")

                def dirs(sha: str = commit.sha) -> list[str]:
                    return git_local.list_dirs(path, sha)

                result = decide.events_for_commit(
                    commit, ref, changed, text, current, referenced_at(path, commit.sha),
                    self._verdict(path, commit.sha), extra, dirs,
                    Bounds(self.local_dirs, self.source.repo, self.branch))
                events.extend(result.events)
                if result.config is not None and result.config is not current:
                    current = result.config
                    text_after, dirs_after = current.text, current.dirs
                    pulls_after = current.pulls
            return Announcement(events, text_after, commits[-1].sha if commits else head,
                                dirs_after, pulls_after)
        for i, commit in enumerate(commits):
            changed = None if (first_sight and i == 0) else git_local.changed_paths(
                path, commit.sha)
            events.extend(decide.events_for_source_commit(
                commit, ref, changed, config, referenced_at(path, commit.sha),
                self._own_verdict(path, commit.sha), extra))
        # environments whose conveyor.yaml block changed are due the head, even untouched
        got_head = {e.subject for e in events if e.correlationid == head}
        stale = [e for e in decide.stale_envs(config, self.name, cursor.envs)
                 if e.name not in got_head]
        if stale:
            info = git_local.commit_info(path, head)
            verdict = self._own_verdict(path, head)
            for env in stale:
                events.extend(decide.announce(
                    info, ref, [env], verdict, changed=None,
                    key=f"{self.name}:config:{decide.env_digest(env)}", extra=extra))
        return Announcement(events, None, commits[-1].sha if commits else head)

    # ------------------------------------------------------------------ publishing

    async def _commit(self, events: list[Event], cursor: Cursor, *, dirty: bool) -> int:
        """Publish ``events``, then write the cursor; the number of events published."""
        for e in events:  # what a person must fix also goes to the log, not only the events
            if e.type == ev.CONFIG_INVALID:
                log.error("watcher.config_invalid", source=self.name,
                          revision=e.correlationid[:12],
                          error=decode_as(e, ConfigInvalid).error)
            elif e.type == ev.COMMIT_REJECTED:
                log.error("watcher.commit_rejected", source=self.name, env=e.subject,
                          revision=e.correlationid[:12],
                          reason=decode_as(e, CommitRejected).reason)
        # Events first, cursor second: the cursor never passes a commit whose events are not
        # all in the log. Killed between the two (or half-way through the events), the next
        # poll starts from the old cursor and announces the same commits again with the same
        # ids (derived from commit, environment and source), which JetStream drops inside its
        # duplicate window (and beyond it, for the first batch after a start: ``_unannounced``);
        # the commits the first try did announce keep their one event.
        try:
            if not self.checked and events:
                events = await self._unannounced(events)
            await self.bus.publish_all(events)
            self.checked = True
            if dirty:
                cursor.epoch = self.bus.epoch
                await self.bus.kv_put(subjects.STATE_BUCKET, self.key, cursor.to_json())
        except BaseException:
            self.checked = False  # the cursor may be behind what is in the log: check again
            raise
        return len(events)

    async def _unannounced(self, events: list[Event]) -> list[Event]:
        """The events of ``events`` not yet in the log, beyond the duplicate window too.

        A batch is published one event at a time, in order, so what an earlier attempt got
        into the log is a prefix. An event is in the log when the last message on its subject
        is it or a later event of the batch on that subject (only the watcher publishes these
        subjects); the end of the prefix is found by bisection, one read per subject asked.
        """
        last: dict[str, str | None] = {}  # subject -> id of the last message on it
        index = {e.id: i for i, e in enumerate(events)}

        async def published(i: int) -> bool:
            e = events[i]
            subject = subjects.event_subject(e.subject, e.type)
            if subject not in last:
                stored = await self.bus.last_event(e.subject, e.type)
                last[subject] = stored.event.id if stored is not None else None
            at = index.get(last[subject] or "")
            return at is not None and at >= i

        lo, hi = 0, len(events)
        while lo < hi:
            mid = (lo + hi) // 2
            if await published(mid):
                lo = mid + 1
            else:
                hi = mid
        if lo:
            log.info("watcher.already_announced", source=self.name, events=lo,
                     of=len(events), revision=events[lo - 1].correlationid[:12])
        return events[lo:]

    async def _failed(self, cursor: Cursor, rev: int, exc: ConveyorError) -> int:
        delay = self.delay()
        log.warning("watcher.fetch_failed", source=self.name, reason=exc.reason,
                    error=str(exc), failures=self.failures, retry_in=round(delay, 1))
        if cursor.failing and cursor.reason == exc.reason:
            return 0  # one event per outage, not one per poll
        event = new_event(ev.SOURCE_FETCH_FAILED, env=ev.NO_ENV, source=SOURCE,
                          correlation=cursor.head or "", key=f"{self.name}:{rev}:{exc.reason}",
                          data={**self._data(), "error": str(exc), "reason": exc.reason,
                                "transient": isinstance(exc, TransientError),
                                "retry_in": round(delay, 1)})
        cursor.failing, cursor.reason = True, exc.reason
        cursor.epoch = self.bus.epoch
        await self.bus.publish(event)
        await self.bus.kv_put(subjects.STATE_BUCKET, self.key, cursor.to_json())
        return 1
