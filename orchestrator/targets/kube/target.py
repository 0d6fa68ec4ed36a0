"""The kubernetes target: server-side apply of a bundle, in order, with health gates and prune.

One sync (``KubeTarget.sync``) of a bundle:

1. **Prepare** every object before touching the cluster: the label
   ``conveyor.dev/environment=<env>``, the default namespace on namespaced objects lacking one
   (scope from discovery, or from a CRD in the same bundle for kinds not served yet), and the
   apply plan (``plan_waves``). A bad sync wave or an unknown kind fails here, having changed
   nothing.
2. **Bootstrap wave**: Namespaces and CRDs, then wait until every CRD is Established (always,
   even with ``wait: false``: its custom resources cannot be applied before); discovery finds
   the new kinds on its next miss.
3. Record the intent in the **inventory** (old plus new entries, ``attempted-*``).
4. **Sync waves** in order (wave, kind, name): each object server-side applied as field manager
   ``conveyor`` (``force`` configurable), a wave's objects concurrently; the next wave starts
   only once this one is healthy (``kube_health``), all within one ``sync.wait.timeout``.
5. **Prune** (``sync.prune``): inventory entries that left the bundle, still labelled for this
   environment and not annotated ``conveyor.dev/prune: disabled``, deleted in reverse order.
6. Write the inventory: the new entries, ``applied-*`` = this bundle, which ``current()`` reads.

``apply`` holds the environment's lock (``KubePool.env_lock``) around a sync, which the
drift loop's self-heal holds too. Errors keep the client's classification: ``TransientError``
(retried by the applier with backoff), ``PermanentError`` (apply.failed). An unhealthy rollout
is not an error: the sync stops at that wave and returns an ``ApplyResult`` whose ``failure``
is ``Degraded`` or ``HealthCheckTimeout`` and whose ``health`` lists the objects not ready.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from orchestrator.adapters.kube import KubeClient
from orchestrator.domain.bundle import ObjectKey, object_key
from orchestrator.domain.inventory import (
    ENVIRONMENT_LABEL,
    Entry,
    Inventory,
    label_for,
    to_prune,
)
from orchestrator.domain.ordering import Phase, Wave, plan_waves
from orchestrator.errors import FencedError, ManifestError, PermanentError, TransientError
from orchestrator.ports import ApplyRequest, ApplyResult, HealthJudge, HealthResult, TargetState

from . import health as kh
from .clients import KubePool
from .inventory import InventoryStore, Record, Stored, union
from .settings import KubeSettings, kube_settings

log = structlog.get_logger(__name__)


def _verdict(health: HealthResult) -> dict[str, Any]:
    """The health an apply event carries: the verdict without the live children, which only
    the ``conveyor.health.*`` event records (once per sync, not twice)."""
    return dataclasses.replace(health, children=()).to_dict()
T = TypeVar("T")
CRD_KIND = ("apiextensions.k8s.io", "CustomResourceDefinition")


def kube_target(env: str, target: Mapping[str, Any], sync: Mapping[str, Any],
                pool: KubePool) -> KubeTarget:
    """The target for ``target: {kubernetes: ...}`` (called by ``Applier.target_for``)."""
    settings = kube_settings(env, target, sync)
    return KubeTarget(settings, pool.client_for(settings), pool.env_lock(env))


@dataclass
class _Progress:
    created: int = 0
    configured: int = 0
    unchanged: int = 0
    live: dict[ObjectKey, Mapping[str, Any]] = field(default_factory=dict)
    health: dict[ObjectKey, kh.ObjectHealth] = field(default_factory=dict)
    judge: HealthJudge | None = None  # the apply's health rules (None: built-in rules)


_ATOMS = frozenset({str, int, float, bool, type(None)})


def _copy(value: Any) -> Any:
    """A deep copy of a manifest, several times faster than ``copy.deepcopy``: new dicts and
    lists, the same (immutable) strings, numbers and booleans, ``deepcopy`` for anything else."""
    kind = type(value)
    if kind is dict:
        return {k: _copy(v) for k, v in value.items()}
    if kind is list:
        return [_copy(v) for v in value]
    return value if kind in _ATOMS else copy.deepcopy(value)


def _group_of(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _crd_scopes(objects: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], bool]:
    """(group, kind) -> namespaced, for the CRDs in a bundle."""
    scopes = {}
    for obj in objects:
        if (_group_of(str(obj.get("apiVersion", ""))), obj.get("kind")) == CRD_KIND:
            spec = obj.get("spec") or {}
            kind = (spec.get("names") or {}).get("kind")
            if spec.get("group") and kind:
                scopes[(str(spec["group"]), str(kind))] = spec.get("scope") != "Cluster"
    return scopes


class KubeTarget:
    def __init__(self, settings: KubeSettings, client: KubeClient,
                 lock: asyncio.Lock | None = None) -> None:
        self.settings = settings
        self.lock = lock or asyncio.Lock()  # the pool's lock of this environment
        self.client = client
        self.env = settings.env
        self.namespace = settings.namespace or client.config.namespace
        self.inventory = InventoryStore(client, self.env,
                                        settings.inventory_namespace or self.namespace,
                                        settings.field_manager, settings.force)
        context = f" context {client.config.context}" if client.config.context else ""
        self.description = f"kubernetes {client.config.server}{context}"

    # -- Target ----------------------------------------------------------------------------

    async def current(self) -> TargetState:
        applied = (await self.inventory.read()).applied
        if applied is None:
            return TargetState(None, None, None)
        return TargetState(applied.digest, applied.revision, applied.origin_seq,
                           applied.epoch or None)

    async def has_applied(self, request: ApplyRequest) -> bool:
        """Only the last applied sync is recorded: it is this request or it is not known."""
        applied = (await self.inventory.read()).applied
        return applied is not None and (
            applied.digest, applied.revision, applied.origin_seq, applied.epoch) == (
            request.digest, request.revision, request.origin_seq, request.epoch)

    async def apply(self, request: ApplyRequest) -> ApplyResult:
        async with self.lock:
            return await self.sync(request)

    async def stored(self) -> Stored:
        return await self.inventory.read()

    # -- one sync (the caller holds the lock) ----------------------------------------------

    async def sync(self, request: ApplyRequest) -> ApplyResult:
        started = time.monotonic()
        deadline = started + self.settings.wait_timeout
        objects = await self.prepare(request.objects)
        waves = plan_waves(objects)
        stored = await self.inventory.read()
        fence = max((r.lease for r in (stored.applied, stored.attempted) if r is not None),
                    default=0)
        if request.fence and fence > request.fence:  # a successor wrote here: hands off
            raise FencedError(f"environment {self.env} was synced under lease {fence}; this "
                              f"applier holds {request.fence}, an older one: it lost the lease")
        new = Inventory.of(self.env, objects)
        record = Record(request.digest, request.revision, request.origin_seq, request.epoch,
                        request.fence)
        before = await self._live_versions(objects)
        progress = _Progress(judge=request.health)
        recorded = False
        for wave in waves:
            if not recorded and wave.phase is Phase.SYNC:
                await self.inventory.write(union(stored.inventory, new), applied=stored.applied,
                                           attempted=record)
                recorded = True
            await self._apply_wave(wave, before, progress)
            failure = None
            if wave.phase is Phase.BOOTSTRAP:
                failure = await self._wait(wave, progress, deadline,
                                           crds_only=not self.settings.wait)
            elif self.settings.wait:
                failure = await self._wait(wave, progress, deadline, crds_only=False)
            if failure is not None:  # later waves wait for this one: the sync ends here
                health = await self._tree(progress)
                return ApplyResult(bool(progress.created or progress.configured),
                                   failure.message,
                                   {"health": _verdict(health),
                                    "unhealthy_objects": list(failure.objects)},
                                   health=health, failure=failure.reason)
        if not recorded:
            await self.inventory.write(union(stored.inventory, new), applied=stored.applied,
                                       attempted=record)
        pruned, kept = await self._prune(stored.inventory, new)
        await self.inventory.write(new, applied=record, attempted=record)
        health = await self._tree(progress)
        changed = bool(progress.created or progress.configured or pruned)
        parts = [f"{progress.created} created", f"{progress.configured} configured",
                 f"{progress.unchanged} unchanged"]
        if pruned:
            parts.append(f"{len(pruned)} pruned")
        summary = (f"server-side applied {len(objects)} object(s) in {len(waves)} wave(s): "
                   f"{', '.join(parts)}; health {health.status.value}")
        log.info("kube.synced", env=self.env, revision=request.revision[:12],
                 cause=request.cause or "commit", summary=summary,
                 ms=round((time.monotonic() - started) * 1000, 1))
        return ApplyResult(changed, summary, {
            "cause": request.cause or "commit", "created": progress.created,
            "configured": progress.configured, "unchanged": progress.unchanged,
            "pruned": pruned, "not_pruned": kept, "waves": len(waves),
            "inventory": {"configmap": self.inventory.where,
                          "entries": [e.to_dict() for e in new.entries]},
            "health": _verdict(health)}, health=health)

    async def _tree(self, progress: _Progress) -> HealthResult:
        """The verdict on the applied objects, with the live children they own."""
        healths = [progress.health[key] for key in sorted(progress.health)]
        return dataclasses.replace(kh.report(healths), children=await kh.children(
            self.client, healths, judge=progress.judge, env=self.env))

    # -- preparing -------------------------------------------------------------------------

    async def prepare(self, objects: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Deep copies labelled for the environment, namespaces defaulted; errors before I/O."""
        try:
            labels = label_for(self.env)
        except ValueError as exc:
            raise PermanentError(str(exc), reason="InvalidConfig") from None
        scopes = _crd_scopes(objects)
        kinds = {(str(o.get("apiVersion", "")), str(o.get("kind", ""))) for o in objects}
        namespaced: dict[tuple[str, str], bool] = {}
        unknown: list[str] = []
        for api_version, kind in sorted(kinds):
            try:
                namespaced[(api_version, kind)] = (
                    await self.client.resource(api_version, kind)).namespaced
            except PermanentError as exc:
                if exc.reason != "NoKindMatch":
                    raise
                scope = scopes.get((_group_of(api_version), kind))
                if scope is None:
                    unknown.append(f"{kind} ({api_version}): the cluster does not serve it and "
                                   "no CRD in this bundle defines it")
                else:
                    namespaced[(api_version, kind)] = scope
        if unknown:
            raise ManifestError(unknown, reason="NoKindMatch")
        out = []
        for obj in objects:
            copied = _copy(dict(obj))
            meta = copied.get("metadata")
            if not isinstance(meta, dict) or not meta.get("name"):
                raise ManifestError([f"{object_key(copied)}: an object needs metadata.name"])
            meta["labels"] = {**(meta.get("labels") or {}), **labels}
            if namespaced[(str(copied.get("apiVersion", "")), str(copied.get("kind", "")))]:
                meta["namespace"] = meta.get("namespace") or self.namespace
            else:
                meta.pop("namespace", None)
            out.append(copied)
        return out

    async def _live_versions(self, objects: Sequence[Mapping[str, Any]]) -> dict[ObjectKey, str]:
        """resourceVersion of the environment's objects before the sync, one LIST per kind and
        namespace (to tell created / configured / unchanged apart)."""
        groups = {(str(o["apiVersion"]), str(o["kind"]), o["metadata"].get("namespace"))
                  for o in objects}
        selector = {ENVIRONMENT_LABEL: self.env}

        async def one(api_version: str, kind: str, ns: str | None) -> list[dict[str, Any]]:
            try:
                return await self.client.list(api_version, kind, ns, label_selector=selector)
            except PermanentError as exc:
                if exc.reason == "NoKindMatch":
                    return []   # a custom resource whose CRD comes with this bundle
                raise

        lists = await self.bounded([functools.partial(one, *g)
                                     for g in sorted(groups, key=str)])
        return {object_key(item): str(item["metadata"].get("resourceVersion", ""))
                for items in lists for item in items}

    # -- applying --------------------------------------------------------------------------

    async def bounded(self, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run ``calls`` at most ``concurrency`` at a time, every one of them even when some
        fail; a permanent failure wins over a transient one, and every failed object is named.

        ``concurrency`` workers take the calls in order (rather than a task per call waiting on a
        semaphore, which costs more than the rest of an object's bookkeeping in a large sync).
        """
        results: list[Any] = [None] * len(calls)
        queue = iter(enumerate(calls))

        async def worker() -> None:
            task = asyncio.current_task()
            for i, call in queue:
                try:
                    results[i] = await call()
                except (Exception, asyncio.CancelledError) as exc:
                    if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                        raise   # this sync is being cancelled, not just that call
                    results[i] = exc

        await asyncio.gather(*(worker() for _ in range(min(self.settings.concurrency,
                                                              len(calls)))))
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return results
        permanent = [e for e in errors if isinstance(e, PermanentError)]
        if permanent:
            if len(permanent) == 1:
                raise permanent[0]
            raise PermanentError("; ".join(str(e) for e in permanent[:10]),
                                 reason=permanent[0].reason)
        transient = [e for e in errors if isinstance(e, TransientError)]
        if transient:
            raise transient[0]
        raise errors[0]

    async def _apply_wave(self, wave: Wave, before: Mapping[ObjectKey, str],
                          progress: _Progress) -> None:
        async def one(obj: Mapping[str, Any]) -> Mapping[str, Any]:
            try:
                return await self.client.apply(obj, field_manager=self.settings.field_manager,
                                               force=self.settings.force)
            except (PermanentError, TransientError) as exc:
                exc.message = f"{object_key(obj)}: {exc.message}"
                exc.args = (exc.message,)
                raise

        live = await self.bounded([functools.partial(one, o) for o in wave.objects])
        for obj, out in zip(wave.objects, live, strict=True):
            key = object_key(obj)
            version = str((out.get("metadata") or {}).get("resourceVersion", ""))
            if key not in before:
                progress.created += 1
            elif before[key] != version:
                progress.configured += 1
            else:
                progress.unchanged += 1
            progress.live[key] = out
            progress.health[key] = kh.of(out, key, str(obj["apiVersion"]), progress.judge)

    async def _wait(self, wave: Wave, progress: _Progress, deadline: float, *,
                    crds_only: bool) -> kh.HealthFailure | None:
        keys = [k for k in wave.keys
                if not crds_only or (k.group, k.kind) == CRD_KIND]
        if not keys:
            return None
        what = f"environment {self.env}, {wave}"
        done, failure = await kh.wait_ready(self.client, [progress.health[k] for k in keys],
                                            deadline=deadline,
                                            interval=self.settings.poll_interval, what=what,
                                            judge=progress.judge)
        for health in done:
            progress.health[health.key] = health
        return failure

    # -- pruning ---------------------------------------------------------------------------

    async def _prune(self, old: Inventory | None,
                     new: Inventory) -> tuple[list[str], list[str]]:
        """Delete what left the bundle; returns (pruned, left in place) as object names."""
        if old is None or old.environment != self.env:
            return [], []
        keep = new.keys()
        gone = [e for e in old.entries if e.key not in keep]
        if not gone:
            return [], []

        async def read(entry: Entry) -> dict[str, Any] | None:
            try:
                return await self.client.get(entry.api_version, entry.key.kind,
                                             entry.key.namespace or None, entry.key.name)
            except PermanentError as exc:
                if exc.reason == "NoKindMatch":
                    return None   # its CRD is gone, and the object with it
                raise

        found = await self.bounded([functools.partial(read, e) for e in gone])
        live = {e.key: obj for e, obj in zip(gone, found, strict=True) if obj is not None}
        chosen = to_prune(old, new, live) if self.settings.prune else []
        for entry in chosen:
            await self.client.delete(entry.api_version, entry.key.kind,
                                     entry.key.namespace or None, entry.key.name)
            log.info("kube.pruned", env=self.env, object=str(entry))
        pruned = {e.key for e in chosen}
        return ([str(e) for e in chosen],
                sorted(str(key) for key in live if key not in pruned))
