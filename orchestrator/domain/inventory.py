"""What was applied to an environment, and what may therefore be pruned.

An **inventory** is the set of objects (identity plus apiVersion) Conveyor applied for one
environment in its last successful sync. It is stored next to the objects (a ConfigMap, see
``to_configmap``) and carried in events as plain JSON, so the next sync can compute what left
the desired state (``to_prune``) without listing every kind in the cluster, as Flux's
kustomize-controller does with ``inventory.Diff(old, new)``.

Pruning deletes things, so ``to_prune`` is deliberately conservative. An object is pruned only if
it is in the old inventory and not in the new one, *and* it still exists, *and* its live labels
say it belongs to this environment (``conveyor.dev/environment=<env>``: something else may have
adopted it since), *and* it is not annotated ``conveyor.dev/prune: disabled``. The result is in
deletion order (reverse apply order, using the live objects' sync waves).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.bundle import ObjectKey, object_key
from orchestrator.domain.ordering import WAVE_ANNOTATIONS, key_order, parse_wave

ENVIRONMENT_LABEL = "conveyor.dev/environment"
"""Label on every object Conveyor applies: the environment that owns it."""
PRUNE_ANNOTATION = "conveyor.dev/prune"
"""Annotation that, set to ``PRUNE_DISABLED``, keeps an object when it leaves the desired state."""
PRUNE_DISABLED = "disabled"

INVENTORY_FORMAT = "conveyor.inventory/v1"
INVENTORY_DATA_KEY = "inventory.json"
"""The key holding the inventory in its ConfigMap's ``data``."""

_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def label_for(environment: str) -> dict[str, str]:
    """The labels that mark an object as owned by ``environment``.

    ValueError unless ``environment`` is a valid Kubernetes label value (1 to 63 characters,
    alphanumerics, ``-``, ``_`` and ``.``, starting and ending with an alphanumeric).
    """
    if not _LABEL_VALUE.fullmatch(environment):
        raise ValueError(f"environment {environment!r} cannot be a label value: use 1 to 63 "
                         "letters, digits, '-', '_' or '.', starting and ending with a letter "
                         "or digit")
    return {ENVIRONMENT_LABEL: environment}


def _metadata_map(obj: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    value = metadata.get(field) if isinstance(metadata, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def owned_by(obj: Mapping[str, Any], environment: str) -> bool:
    """Whether the live object's labels say it belongs to ``environment``."""
    return _metadata_map(obj, "labels").get(ENVIRONMENT_LABEL) == environment


def prune_disabled(obj: Mapping[str, Any]) -> bool:
    """Whether the live object asks never to be pruned."""
    return _metadata_map(obj, "annotations").get(PRUNE_ANNOTATION) == PRUNE_DISABLED


def prunable(obj: Mapping[str, Any], environment: str) -> bool:
    """Whether a live object may be deleted when it leaves ``environment``'s desired state."""
    return owned_by(obj, environment) and not prune_disabled(obj)


@dataclass(frozen=True, slots=True, order=True)
class Entry:
    """One applied object: its identity and the apiVersion it was applied with."""

    key: ObjectKey
    api_version: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Entry:
        return cls(object_key(obj), str(obj.get("apiVersion", "")))

    def to_dict(self) -> dict[str, str]:
        return {"apiVersion": self.api_version, "kind": self.key.kind,
                "namespace": self.key.namespace, "name": self.key.name}

    @classmethod
    def from_dict(cls, data: object) -> Entry:
        if not isinstance(data, Mapping):
            raise ValueError(f"inventory entry must be an object, got {data!r}")
        fields = {}
        for name in ("apiVersion", "kind", "name"):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"inventory entry {dict(data)!r}: {name} must be a non-empty "
                                 "string")
            fields[name] = value
        namespace = data.get("namespace", "")
        if not isinstance(namespace, str):
            raise ValueError(f"inventory entry {dict(data)!r}: namespace must be a string")
        obj = {"apiVersion": fields["apiVersion"], "kind": fields["kind"],
               "metadata": {"name": fields["name"], "namespace": namespace}}
        return cls.of(obj)

    def __str__(self) -> str:
        return str(self.key)


@dataclass(frozen=True, slots=True)
class Inventory:
    """The objects applied to one environment, one entry per identity, sorted by identity."""

    environment: str
    entries: tuple[Entry, ...] = ()

    def __post_init__(self) -> None:
        label_for(self.environment)  # validates the name
        counts = Counter(entry.key for entry in self.entries)
        if twice := sorted(key for key, count in counts.items() if count > 1):
            raise ValueError("an inventory lists each object once; more than once: "
                             + ", ".join(map(str, twice)))
        object.__setattr__(self, "entries", tuple(sorted(self.entries)))

    @classmethod
    def of(cls, environment: str, objects: Iterable[Mapping[str, Any]]) -> Inventory:
        """The inventory of the objects about to be applied to ``environment``."""
        return cls(environment, tuple(Entry.of(obj) for obj in objects))

    def keys(self) -> frozenset[ObjectKey]:
        return frozenset(entry.key for entry in self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"format": INVENTORY_FORMAT, "environment": self.environment,
                "entries": [entry.to_dict() for entry in self.entries]}

    @classmethod
    def from_dict(cls, data: object) -> Inventory:
        if not isinstance(data, Mapping) or data.get("format") != INVENTORY_FORMAT:
            raise ValueError(f"not a conveyor inventory (expected format {INVENTORY_FORMAT!r})")
        environment = data.get("environment")
        entries = data.get("entries")
        if not isinstance(environment, str):
            raise ValueError("inventory environment must be a string")
        if not isinstance(entries, list):
            raise ValueError("inventory entries must be a list")
        return cls(environment, tuple(Entry.from_dict(item) for item in entries))

    def to_json(self) -> str:
        """Canonical JSON: the same inventory always gives the same text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Inventory:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"inventory is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def inventory_name(environment: str) -> str:
    """The name of the ConfigMap holding ``environment``'s inventory.

    Object names allow only lowercase letters, digits and '-': an environment name that needs
    changing to fit gets a short hash of the original, so "Prod_EU" and "prod-eu" stay apart.
    """
    safe = re.sub(r"[^a-z0-9-]", "-", environment.lower())
    if safe != environment:
        safe = f"{safe}-{hashlib.sha256(environment.encode()).hexdigest()[:8]}"
    return f"conveyor-inventory-{safe}"


def to_configmap(inventory: Inventory, namespace: str) -> dict[str, Any]:
    """The ConfigMap that stores ``inventory`` in the cluster, for server-side apply."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": inventory_name(inventory.environment), "namespace": namespace,
                         "labels": label_for(inventory.environment),
                         "annotations": {PRUNE_ANNOTATION: PRUNE_DISABLED}},
            "data": {INVENTORY_DATA_KEY: inventory.to_json()}}


def from_configmap(configmap: Mapping[str, Any]) -> Inventory:
    """The inventory stored in ``configmap``; ValueError when it holds none."""
    data = configmap.get("data")
    text = data.get(INVENTORY_DATA_KEY) if isinstance(data, Mapping) else None
    if not isinstance(text, str):
        raise ValueError(f"{object_key(configmap)} holds no {INVENTORY_DATA_KEY}")
    return Inventory.from_json(text)


def removed(old: Inventory, new: Inventory | Iterable[ObjectKey]) -> list[Entry]:
    """Entries of ``old`` whose identity is not in ``new``, sorted by identity."""
    keep = new.keys() if isinstance(new, Inventory) else frozenset(new)
    return [entry for entry in old.entries if entry.key not in keep]


def _lenient_wave(obj: Mapping[str, Any]) -> int:
    # A bad annotation on a live object must not block pruning: it only changes the order.
    annotations = _metadata_map(obj, "annotations")
    for name in WAVE_ANNOTATIONS:
        if name in annotations:
            try:
                return parse_wave(annotations[name])
            except ValueError:
                return 0
    return 0


def to_prune(old: Inventory, new: Inventory | Iterable[ObjectKey],
             live: Mapping[ObjectKey, Mapping[str, Any]]) -> list[Entry]:
    """What to delete now that ``new`` replaces ``old``, in deletion order.

    ``live`` maps identities to the live objects (at least their ``metadata``) of the entries
    that still exist; an entry absent from it is already gone and needs nothing. Only objects
    labelled for ``old.environment`` and not annotated ``conveyor.dev/prune: disabled`` are
    returned.
    """
    if isinstance(new, Inventory) and new.environment != old.environment:
        raise ValueError(f"cannot prune {old.environment!r} using the inventory of "
                         f"{new.environment!r}")
    candidates = [(entry, live[entry.key]) for entry in removed(old, new) if entry.key in live]
    chosen = [(entry, obj) for entry, obj in candidates if prunable(obj, old.environment)]
    chosen.sort(key=lambda pair: key_order(pair[0].key, _lenient_wave(pair[1])), reverse=True)
    return [entry for entry, _ in chosen]
