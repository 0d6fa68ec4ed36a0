"""The inventory ConfigMap in the cluster, plus what it records about the last syncs.

``conveyor-inventory-<env>`` (see ``orchestrator.domain.inventory``) holds the set of objects
Conveyor applied, and annotations recording two syncs, as Flux keeps ``lastAttemptedRevision``
apart from ``lastAppliedRevision``:

- ``conveyor.dev/applied-*`` (digest, revision, origin-seq): the last sync that finished, healthy.
  This is what ``Target.current()`` answers, so the applier skips a bundle the cluster holds.
- ``conveyor.dev/attempted-*``: the last sync started. The drift check compares the cluster with
  that bundle (it is what Conveyor last put there, even if its health wait failed).

A sync writes the inventory twice: before its first non-bootstrap wave with the union of the old
and new entries (so an object applied by a sync that then crashes is still known and can be
pruned later), and at the end with exactly the new entries and ``applied-*`` set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.adapters.kube import KubeClient
from orchestrator.domain.inventory import (
    Entry,
    Inventory,
    from_configmap,
    inventory_name,
    to_configmap,
)

PREFIX = "conveyor.dev/"


@dataclass(frozen=True, slots=True)
class Record:
    """One sync of a bundle: which digest, from which commit, at which stream position."""

    digest: str
    revision: str
    origin_seq: int
    epoch: str = ""  # the event log's epoch the sync was made under ("" = before epochs)
    lease: int = 0  # the applier's lease token (nats_lease); 0: none

    def annotations(self, what: str) -> dict[str, str]:
        return {f"{PREFIX}{what}-digest": self.digest,
                f"{PREFIX}{what}-revision": self.revision,
                f"{PREFIX}{what}-origin-seq": str(self.origin_seq),
                **({f"{PREFIX}{what}-log-epoch": self.epoch} if self.epoch else {}),
                **({f"{PREFIX}{what}-lease": str(self.lease)} if self.lease else {})}

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, Any], what: str) -> Record | None:
        digest = annotations.get(f"{PREFIX}{what}-digest")
        if not isinstance(digest, str) or not digest:
            return None
        seq = str(annotations.get(f"{PREFIX}{what}-origin-seq") or "")
        return cls(digest, str(annotations.get(f"{PREFIX}{what}-revision") or ""),
                   int(seq) if seq.isdigit() else 0,
                   str(annotations.get(f"{PREFIX}{what}-log-epoch") or ""),
                   int(lease) if (lease := str(annotations.get(f"{PREFIX}{what}-lease") or ""))
                   .isdigit() else 0)


@dataclass(frozen=True, slots=True)
class Stored:
    """What the inventory ConfigMap says (all None when there is none yet)."""

    inventory: Inventory | None = None
    applied: Record | None = None
    attempted: Record | None = None


def union(old: Inventory | None, new: Inventory) -> Inventory:
    """``new`` plus the entries of ``old`` it does not have (what may exist during a sync)."""
    if old is None:
        return new
    entries: dict[Any, Entry] = {e.key: e for e in old.entries}
    entries.update({e.key: e for e in new.entries})
    return Inventory(new.environment, tuple(entries.values()))


class InventoryStore:
    def __init__(self, client: KubeClient, env: str, namespace: str, field_manager: str,
                 force: bool) -> None:
        self.client = client
        self.env = env
        self.namespace = namespace
        self.name = inventory_name(env)
        self._manager = field_manager
        self._force = force

    @property
    def where(self) -> str:
        return f"ConfigMap/{self.namespace}/{self.name}"

    async def read(self) -> Stored:
        live = await self.client.get("v1", "ConfigMap", self.namespace, self.name)
        if live is None:
            return Stored()
        try:
            inventory = from_configmap(live)
        except ValueError:
            inventory = None   # not ours, or damaged: treated as no inventory (nothing pruned)
        annotations = (live.get("metadata") or {}).get("annotations") or {}
        return Stored(inventory, Record.from_annotations(annotations, "applied"),
                      Record.from_annotations(annotations, "attempted"))

    async def write(self, inventory: Inventory, *, applied: Record | None,
                    attempted: Record | None) -> None:
        obj = to_configmap(inventory, self.namespace)
        annotations = obj["metadata"]["annotations"]
        if applied is not None:
            annotations.update(applied.annotations("applied"))
        if attempted is not None:
            annotations.update(attempted.annotations("attempted"))
        await self.client.apply(obj, field_manager=self._manager, force=self._force)
