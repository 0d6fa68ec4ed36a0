"""Secret values never leave Conveyor through the api: masked the way Argo CD masks them.

A ``v1/Secret``'s ``data`` and ``stringData`` keep their keys and every value becomes
``++++++++`` (Argo CD's mask), ``stringData`` folded into ``data`` as the API server does; the
``kubectl.kubernetes.io/last-applied-configuration`` annotation, which would repeat the values,
is dropped. Everything else in the object is left as it is.

Only what is *served* is masked: the bundle in the object store stays real, and the applier and
the drift loop read it from there. A masked bundle is therefore not the bytes its digest names;
``conveyor diff --api`` compares a masked Secret by its keys (orchestrator.domain.diff), and
``conveyor diff --nats`` (the operator's bus credentials) compares its values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from orchestrator.domain.bundle import BUNDLE_FORMAT

MASK: Final = "++++++++"
LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"


def is_secret(obj: Mapping[str, Any]) -> bool:
    return obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1"


def mask_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with a Secret's values masked (other objects: an unchanged copy)."""
    result = dict(obj)
    if not is_secret(obj):
        return result
    keys: list[str] = []
    for field in ("data", "stringData"):
        values = result.pop(field, None)
        if isinstance(values, Mapping):
            keys.extend(str(k) for k in values)
    if keys or "data" in obj or "stringData" in obj:
        result["data"] = dict.fromkeys(sorted(set(keys)), MASK)
    metadata = result.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("annotations"), Mapping):
        annotations = {k: v for k, v in metadata["annotations"].items() if k != LAST_APPLIED}
        result["metadata"] = {**metadata, "annotations": annotations}
    return result


def mask_bundle(payload: bytes) -> bytes:
    """The bundle's canonical JSON with every Secret masked (the format stays the same)."""
    data = json.loads(payload)
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise ValueError("not a conveyor bundle")
    objects = [mask_object(o) if isinstance(o, Mapping) else o for o in data["objects"]]
    return json.dumps({**data, "objects": objects}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()
