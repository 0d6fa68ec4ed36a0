"""renderer: commit.detected -> render the environment at that commit -> render.succeeded|failed.

The repository is exported at the commit into a snapshot directory (shared by the environments
of one commit) and rendered there in a worker thread, together with the renders of that commit
that arrive alongside (``batch.RenderBatcher``: the Kustomize overlays among them share tool
runs); the bundle goes to the object store once per digest, and the event carries the digest,
so the applier never re-renders.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from orchestrator import subjects
from orchestrator.adapters import git_tree
from orchestrator.adapters.git_source import Checkout
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import digest_of, encode_bundle
from orchestrator.domain.codec import build
from orchestrator.domain.events import Event, new_event, outcome_id
from orchestrator.domain.payloads import RenderFailed, RenderSucceeded
from orchestrator.errors import ManifestError, PermanentError, TransientError
from orchestrator.health_rules.engine import read_repo_files, rules_of_event
from orchestrator.health_rules.sources import HealthRuleError
from orchestrator.rendering.safety import offline_prefix
from orchestrator.resources import Resources
from orchestrator.runtime import Ack, Consumer, ConsumerSpec, Delivery, Fail, Outcome, Retry
from services.renderer.batch import RenderBatcher
from services.renderer.cache import cache_entry, render_key

log = structlog.get_logger(__name__)
SOURCE = "conveyor/renderer"
SNAPSHOTS_KEPT = 8
# A held message is renewed every ack_wait / 3 (orchestrator.runtime); the one a killed
# process held comes back this soon, so an older commit does not wait long for its outcome.
ACK_WAIT = 5.0
# Renders sent to the tool together (``batch``), and lanes per tool slot: enough waiting renders
# to fill the slots' batches while the previous ones run.
MAX_BATCH = 32
LANES_PER_SLOT = 32


class Snapshots:
    """Commit trees exported to disk, shared by every environment rendering that commit."""

    def __init__(self, root: Path, max_file_bytes: int | None = None) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self._ready: OrderedDict[str, Path] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        shutil.rmtree(root, ignore_errors=True)  # leftovers of a previous run are not trusted
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        root.chmod(0o700)  # rendered repositories may hold what other local users must not read

    async def get(self, repo_path: str, sha: str) -> Path:
        lock = self._locks.setdefault(sha, asyncio.Lock())
        async with lock:
            if sha in self._ready:
                self._ready.move_to_end(sha)
                return self._ready[sha]
            dest = self.root / sha
            shutil.rmtree(dest, ignore_errors=True)
            await asyncio.to_thread(partial(git_tree.export_tree, repo_path, sha, dest,
                                            max_file_bytes=self.max_file_bytes))
            self._ready[sha] = dest
            while len(self._ready) > SNAPSHOTS_KEPT:
                old_sha, old = self._ready.popitem(last=False)
                self._locks.pop(old_sha, None)
                await asyncio.to_thread(shutil.rmtree, old, True)
            return dest


class Renderer:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.bus = resources.bus
        self.settings = settings = resources.settings
        self.snapshots = Snapshots(settings.data_dir / "snapshots",
                                   settings.render_tools.max_file_bytes)
        self._consumer: Consumer | None = None
        self.batcher: RenderBatcher | None = None

    def _checkout(self, data: dict[str, Any]) -> Checkout:
        """The event's source on this machine, with the credentials its config names."""
        return self.resources.mirrors.for_event(data, self.settings.data_dir,
                                                scope=self.settings.secrets.scope())

    async def start(self) -> None:
        if not self.settings.render_tools.remote_base_hosts and \
                not await asyncio.to_thread(offline_prefix):
            log.warning("render.network_not_isolated", reason="this host refuses unprivileged "
                        "user namespaces: render tools run with the process's network; remote "
                        "references are still refused before a tool runs")
        envs = self.settings.envs
        slots = self.settings.render_concurrency
        # no more tool runs at once than cores: more only split the renders waiting into
        # smaller batches, each paying the tool's start again, on the same CPUs
        self.batcher = RenderBatcher(self.settings.render_tools,
                                     slots=max(1, min(slots, os.cpu_count() or 1)),
                                     max_batch=MAX_BATCH)
        self._consumer = Consumer(self.bus, ConsumerSpec(
            durable=subjects.consumer_name("renderer", envs), stage="render",
            filters=subjects.filter_for(ev.COMMIT_DETECTED, envs or None),
            handler=self.handle, max_deliver=8, ack_wait=ACK_WAIT,
            concurrency=slots * LANES_PER_SLOT, one_outcome=True))
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self.batcher is not None:
            await self.batcher.close()

    async def handle(self, delivery: Delivery) -> Outcome:
        outcome = await self._render(delivery)
        # one render outcome per detected commit (the runtime's ``dead`` shares it too): a
        # commit handled twice after a crash cannot end both rendered and failed
        return replace(outcome, emit=[_one_outcome(e) for e in outcome.emit])

    async def _render(self, delivery: Delivery) -> Outcome:
        event = delivery.event
        data = event.data
        env: dict[str, Any] = data["env"]
        started = time.monotonic()
        common = {k: data.get(k) for k in ("revision", "short", "message", "author",
                                           "committed_at", "branch", "source", "repo",
                                           "source_config")}
        common["env"] = env
        common["origin_seq"] = delivery.seq
        settings = env.get("render") or {}
        try:
            repo_path = await self._checkout(data).ensure(event.correlationid)
            key = await self._key(repo_path, event.correlationid, str(env["path"]), settings)
            hit = await self._cached(key)
            health_files = await self._health_files(env, repo_path, event.correlationid)
            if health_files is not None:
                common["health_rules"] = health_files
            if hit is not None:
                ms = round((time.monotonic() - started) * 1000, 1)
                return Ack([new_event(ev.RENDER_SUCCEEDED, env=event.subject, cause=event,
                                      source=SOURCE,
                                      data=build(RenderSucceeded, **common, **hit, cache="hit",
                                                 render_key=key, duration_ms=ms))])
            snapshot = await self.snapshots.get(repo_path, event.correlationid)
            assert self.batcher is not None
            result = await self.batcher.render(snapshot, str(env["path"]), settings)
            payload = encode_bundle(m.obj for m in result.manifests)
            digest = digest_of(payload)
            await self.bus.put_bundle(digest, payload)
            if key is not None:
                await self.bus.kv_put(subjects.STATE_BUCKET, cache_entry(key), {
                    "digest": digest, "objects": len(result.manifests),
                    "renderer": result.renderer, "tool_version": result.tool_version})
        except ManifestError as exc:
            return Fail([self._failed(delivery, common, exc.errors, exc.reason, started)])
        except TransientError as exc:
            log.warning("render.transient", env=event.subject, error=str(exc))
            return Retry(exc.delay or min(60.0, 2.0 ** delivery.attempt), reason=str(exc))
        except PermanentError as exc:
            return Fail([self._failed(delivery, common, [str(exc)], exc.reason, started)])
        except RecursionError:  # input nested past the interpreter's stack: it always will be
            return Fail([self._failed(delivery, common, ["the manifests are nested too deeply "
                                                         "to process"], "TooDeep", started)])
        ms = round((time.monotonic() - started) * 1000, 1)
        log.info("render.succeeded", env=event.subject, revision=event.correlationid[:12],
                 objects=len(result.manifests), digest=digest[:19], ms=ms)
        return Ack([new_event(
            ev.RENDER_SUCCEEDED, env=event.subject, cause=event, source=SOURCE,
            data=build(RenderSucceeded, **common, digest=digest, objects=len(result.manifests),
                       renderer=result.renderer, tool_version=result.tool_version,
                       cache="miss", render_key=key, duration_ms=ms),
        )])

    async def _health_files(self, env: dict[str, Any], repo_path: str,
                            sha: str) -> dict[str, Any] | None:
        """The health rule files conveyor.yaml names, at this commit (None when it names
        none); a missing or unreadable one fails the render, naming it."""
        health = env.get("health") or {}
        if not (health.get("customizations") or health.get("argocdConfigMap")):
            return None

        snapshot = await self.snapshots.get(repo_path, sha)
        try:
            files = await asyncio.to_thread(read_repo_files, snapshot, health)
            rules_of_event(health, files)  # the applier must be able to use them
        except HealthRuleError as exc:
            raise PermanentError(str(exc), reason="InvalidHealthRules") from None
        return files

    async def _key(self, repo_path: str, sha: str, env_path: str,
                   settings: dict[str, Any]) -> str | None:
        try:
            key, _ = await asyncio.to_thread(render_key, repo_path, sha, env_path, settings,
                                             self.settings.render_tools)
        except Exception as exc:  # no key, no cache: the render itself will report problems
            log.info("render.no_cache_key", error=str(exc))
            return None
        return key

    async def _cached(self, key: str | None) -> dict[str, Any] | None:
        if key is None:
            return None
        found = await self.bus.kv_get(subjects.STATE_BUCKET, cache_entry(key))
        if found is None or not await self.bus.has_bundle(str(found[0].get("digest"))):
            return None
        return {k: found[0][k] for k in ("digest", "objects", "renderer", "tool_version")
                if k in found[0]}

    def _failed(self, delivery: Delivery, common: dict[str, Any], errors: list[str],
                reason: str, started: float) -> Any:
        ms = round((time.monotonic() - started) * 1000, 1)
        log.warning("render.failed", env=delivery.event.subject, errors=errors[:5])
        return new_event(ev.RENDER_FAILED, env=delivery.event.subject, cause=delivery.event,
                         source=SOURCE,
                         data=build(RenderFailed, **common, errors=errors,
                                    error="; ".join(errors[:20]), reason=reason,
                                    duration_ms=ms))


def _one_outcome(event: Event) -> Event:
    if event.type in (ev.RENDER_SUCCEEDED, ev.RENDER_FAILED):
        return replace(event, id=outcome_id("render", event.subject, event.causationid))
    return event
