"""A rendered bundle: the canonical, content-addressed set of objects for one environment.

The same objects always serialise to the same bytes (sorted keys, objects sorted by identity),
so the digest is a stable name for "what should be applied" and the applier can compare it with
what a target already holds before doing anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

BUNDLE_FORMAT = "conveyor.bundle/v1"


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    """Identity of a Kubernetes object: group, kind, namespace ("" if cluster-scoped), name."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        gk = f"{self.kind}.{self.group}" if self.group else self.kind
        return f"{gk}/{self.namespace}/{self.name}" if self.namespace else f"{gk}/{self.name}"


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    api_version = str(obj.get("apiVersion", ""))
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    meta = obj.get("metadata") or {}
    return ObjectKey(group, str(obj.get("kind", "")), str(meta.get("namespace") or ""),
                     str(meta.get("name", "")))


def canonical_objects(objects: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return sorted((dict(o) for o in objects), key=object_key)


def encode_bundle(objects: Iterable[Mapping[str, Any]]) -> bytes:
    """Canonical bytes of a bundle (JSON, sorted keys, objects in key order)."""
    payload = {"format": BUNDLE_FORMAT, "objects": canonical_objects(objects)}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def decode_bundle(payload: bytes) -> list[dict[str, Any]]:
    data = json.loads(payload)
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise ValueError("not a conveyor bundle")
    return list(data["objects"])


def digest_of(payload: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload).hexdigest()
