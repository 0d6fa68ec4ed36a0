"""Apply order: data plus a comparator, as gitops-engine ``pkg/sync`` and Helm's install order.

Objects are applied by this key, smallest first:

1. **phase**: Namespaces and CustomResourceDefinitions first, in a bootstrap wave of their own,
   whatever their sync-wave annotation says. Everything else needs them: a namespaced object
   cannot be created before its namespace, nor a custom resource before its CRD is established.
2. **sync wave**: the integer annotation ``conveyor.dev/sync-wave`` (Argo CD's
   ``argocd.argoproj.io/sync-wave`` is honoured too, so existing manifests keep their order;
   ours wins when both are set). Default 0; negative waves come before it.
3. **kind**: Helm's install order (Namespace, NetworkPolicy, ResourceQuota, ... APIService),
   then unknown kinds (custom resources) by kind name.
4. **group, namespace, name**, so the order is total and the same on every run.

A **wave** (``plan_waves``) is the set of objects applied together before the applier waits for
their health; the next wave starts only when the previous one is healthy. Deletion (pruning)
goes the other way round (``deletion_order``): custom resources before their CRDs, the content
of a namespace before the namespace.

An annotation that is not an integer is refused with ``InvalidSyncWave``, naming every bad
object: guessing a wave would apply things in an order nobody asked for.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from orchestrator.domain.bundle import ObjectKey, object_key
from orchestrator.errors import ManifestError

SYNC_WAVE_ANNOTATION = "conveyor.dev/sync-wave"
ARGOCD_SYNC_WAVE_ANNOTATION = "argocd.argoproj.io/sync-wave"
WAVE_ANNOTATIONS = (SYNC_WAVE_ANNOTATION, ARGOCD_SYNC_WAVE_ANNOTATION)
"""Where a wave is read from, first found wins."""

BOOTSTRAP_KINDS = frozenset({"Namespace", "CustomResourceDefinition"})

KIND_ORDER: tuple[str, ...] = (
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
    "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
    "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
    "IngressClass", "Ingress", "APIService",
)
"""Helm's install order (``releaseutil.InstallOrder``); kinds not listed come after, by name."""

_KIND_RANK = MappingProxyType({kind: rank for rank, kind in enumerate(KIND_ORDER)})
_UNKNOWN_KIND = len(KIND_ORDER)
_INTEGER = re.compile(r"[+-]?[0-9]+")


class InvalidSyncWave(ManifestError):
    """One or more sync-wave annotations are not integers."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors, reason="InvalidSyncWave")


class Phase(enum.IntEnum):
    BOOTSTRAP = 0
    """Namespaces and CRDs."""
    SYNC = 1
    """Everything else, by wave."""


class ApplyKey(NamedTuple):
    """The sort key of one object; tuples compare field by field."""

    phase: Phase
    wave: int
    kind_rank: int
    kind: str
    group: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Wave:
    """Objects applied together, in apply order, before waiting for their health."""

    phase: Phase
    number: int
    """The sync wave; 0 for the bootstrap wave."""
    objects: tuple[Mapping[str, Any], ...]

    @property
    def keys(self) -> list[ObjectKey]:
        return [object_key(obj) for obj in self.objects]

    def __str__(self) -> str:
        label = "namespaces and CRDs" if self.phase is Phase.BOOTSTRAP else f"wave {self.number}"
        return f"{label}: {len(self.objects)} object(s)"


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def parse_wave(value: object) -> int:
    """An annotation value as a wave; ValueError unless it is an integer ("-1", " 3", 2)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise ValueError(f"sync wave must be an integer, got {value!r}")


def sync_wave(obj: Mapping[str, Any]) -> int:
    """The object's sync wave (0 when unannotated); InvalidSyncWave when not an integer."""
    annotations = _annotations(obj)
    for name in WAVE_ANNOTATIONS:
        if name in annotations:
            try:
                return parse_wave(annotations[name])
            except ValueError:
                raise InvalidSyncWave([f"{object_key(obj)}: annotation {name} must be an "
                                       f"integer, got {annotations[name]!r}"]) from None
    return 0


def phase_of(kind: str) -> Phase:
    return Phase.BOOTSTRAP if kind in BOOTSTRAP_KINDS else Phase.SYNC


def key_order(key: ObjectKey, wave: int = 0) -> ApplyKey:
    """The apply key of an object known only by identity (an inventory entry) and its wave."""
    phase = phase_of(key.kind)
    return ApplyKey(phase, wave if phase is Phase.SYNC else 0,
                    _KIND_RANK.get(key.kind, _UNKNOWN_KIND), key.kind, key.group, key.namespace,
                    key.name)


def apply_key(obj: Mapping[str, Any]) -> ApplyKey:
    """The apply key of ``obj``: phase, wave, kind, group, namespace, name."""
    return key_order(object_key(obj), sync_wave(obj))


def _check_waves(objects: Sequence[Mapping[str, Any]]) -> None:
    errors = []
    for obj in objects:
        try:
            sync_wave(obj)
        except InvalidSyncWave as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidSyncWave(errors)


def apply_order(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``objects`` sorted for applying; InvalidSyncWave lists every bad annotation."""
    items = list(objects)
    _check_waves(items)
    return sorted(items, key=apply_key)


def deletion_order(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``objects`` sorted for deleting: the exact reverse of the apply order."""
    return apply_order(objects)[::-1]


def plan_waves(objects: Iterable[Mapping[str, Any]]) -> list[Wave]:
    """``objects`` grouped into waves, in order; the bootstrap wave (if any) comes first."""
    ordered = apply_order(objects)
    return [Wave(phase, number, tuple(group))
            for (phase, number), group in itertools.groupby(
                ordered, key=lambda obj: apply_key(obj)[:2])]
