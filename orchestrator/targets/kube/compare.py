"""Desired bundle vs the live cluster, for the drift check and ``conveyor diff``.

Each desired object (prepared exactly as a sync would: label, default namespace) is read with a
GET and compared with ``orchestrator.domain.diff`` (server fields ignored, live projected on the
fields we set). That comparison is cheap but can over-report (a quantity spelled differently by
the API server), so every object it flags is confirmed with a **server-side dry-run apply**: the
object as the API server would make it is compared with the live one, and only a real difference
is drift (what ``kubectl diff`` shows). An object the dry run refuses (a field-manager conflict
with ``force: false``) stays reported with the first comparison.

Objects of the inventory that are no longer desired, still exist and would be pruned show as
``removed``; missing desired objects as ``added``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.domain.bundle import ObjectKey, object_key
from orchestrator.domain.diff import ObjectDiff, diff_object
from orchestrator.domain.inventory import Entry, Inventory, prunable
from orchestrator.errors import PermanentError

from .target import KubeTarget


async def _get(target: KubeTarget, api_version: str, kind: str, namespace: str,
               name: str) -> dict[str, Any] | None:
    try:
        return await target.client.get(api_version, kind, namespace or None, name)
    except PermanentError as exc:
        if exc.reason == "NoKindMatch":
            return None   # a custom resource whose CRD is not installed: it does not exist
        raise


async def _compare_one(target: KubeTarget, desired: Mapping[str, Any]) -> tuple[
        ObjectDiff | None, str]:
    """The difference of one object (None: in sync) and the live resourceVersion ("" absent)."""
    key = object_key(desired)
    live = await _get(target, str(desired["apiVersion"]), key.kind, key.namespace, key.name)
    if live is None:
        return diff_object(desired, None), ""
    version = str((live.get("metadata") or {}).get("resourceVersion", ""))
    first = diff_object(desired, live)
    if first is None:
        return None, version
    try:
        would_be = await target.client.apply(desired, field_manager=target.settings.field_manager,
                                             force=target.settings.force, dry_run=True)
    except PermanentError:
        return first, version
    return diff_object(would_be, live), version


async def _removed(target: KubeTarget, entry: Entry) -> ObjectDiff | None:
    live = await _get(target, entry.api_version, entry.key.kind, entry.key.namespace,
                      entry.key.name)
    if live is None or not prunable(live, target.env):
        return None
    return diff_object(None, live)


async def compare(target: KubeTarget, desired: Sequence[Mapping[str, Any]],
                  inventory: Inventory | None = None) -> tuple[list[ObjectDiff],
                                                               dict[ObjectKey, str]]:
    """Every object that differs, sorted by identity, and the live resourceVersion of each."""
    prepared = await target.prepare(desired)
    results = await target.bounded([functools.partial(_compare_one, target, obj)
                                     for obj in prepared])
    diffs: list[ObjectDiff] = []
    versions: dict[ObjectKey, str] = {}
    for obj, (found, version) in zip(prepared, results, strict=True):
        if found is not None:
            diffs.append(found)
            versions[object_key(obj)] = version
    if inventory is not None:
        wanted = {object_key(obj) for obj in prepared}
        gone = [e for e in inventory.entries if e.key not in wanted]
        for entry, found_gone in zip(gone, await target.bounded(
                [functools.partial(_removed, target, e) for e in gone]), strict=True):
            if found_gone is not None:
                diffs.append(found_gone)
                versions[entry.key] = ""
    return sorted(diffs, key=lambda d: d.key), versions
