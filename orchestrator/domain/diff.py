"""Desired vs live: which objects differ, and a unified YAML diff of each for people.

Conveyor applies with server-side apply, so "in sync" means *every field we set has the value
we set*, not "the live object equals the manifest". The comparison therefore:

1. drops what the server owns on both sides: ``status``; ``metadata.managedFields``,
   ``resourceVersion``, ``uid``, ``generation``, ``creationTimestamp``, ``selfLink``; and the
   annotations ``kubectl.kubernetes.io/last-applied-configuration`` and
   ``deployment.kubernetes.io/revision``;
2. projects the live object onto the fields present in the desired one (server-side apply
   semantics): defaults the API server filled in (``imagePullPolicy``, ``protocol: TCP``...)
   and fields other managers own (an HPA's ``replicas`` aside, labels added by a controller, a
   sidecar injected into ``containers``) are not drift. Lists whose items all have a ``name``
   (containers, env, volumes, ports) are matched by name, like the API's associative lists;
   other lists by position;
3. treats as equal what the API server only re-spells: a desired number and the same number
   as a string (``cpu: 1`` vs ``"1"``), a desired empty map or list and an absent field, a
   desired ``null`` and an absent field, and a Secret's ``stringData`` and its base64 ``data``.

What remains is drift. ``unified_text`` shows it as a unified diff of sorted YAML, from live to
desired; a Secret's values are redacted in the text (never in the comparison): equal values show
as ``<redacted>``, a changed one as ``<redacted, changed>``. A Secret masked by the api
(``++++++++``, orchestrator.domain.masking: ``conveyor diff --api``) is compared by its keys.

Not handled (open points): quantity canonical forms (``0.5`` vs ``500m``, ``1024Mi`` vs
``1Gi``), and objects whose namespace the caller has not defaulted (they differ in identity).
"""

from __future__ import annotations

import base64
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import yaml

from orchestrator.domain.bundle import ObjectKey, object_key
from orchestrator.domain.masking import MASK

Change = Literal["added", "changed", "removed"]

SERVER_METADATA_FIELDS = ("managedFields", "resourceVersion", "uid", "generation",
                          "creationTimestamp", "selfLink")
IGNORED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",
                       "deployment.kubernetes.io/revision")
REDACTED = "<redacted>"
REDACTED_CHANGED = "<redacted, changed>"

_SYMBOLS: Mapping[Change, str] = MappingProxyType({"added": "+", "changed": "~", "removed": "-"})


@dataclass(frozen=True, slots=True)
class ObjectDiff:
    """One object that differs: added (desired only), changed, or removed (live only)."""

    key: ObjectKey
    change: Change
    unified_text: str

    def __str__(self) -> str:
        return f"{_SYMBOLS[self.change]} {self.key}"


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _is_secret(obj: Mapping[str, Any]) -> bool:
    return obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1"


def strip_server_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` without the fields the server owns (and without nulls)."""
    result: dict[str, Any] = _without_nulls(obj)
    result.pop("status", None)
    metadata = result.get("metadata")
    if isinstance(metadata, dict):
        for name in SERVER_METADATA_FIELDS:
            metadata.pop(name, None)
        annotations = metadata.get("annotations")
        if isinstance(annotations, dict):
            for name in IGNORED_ANNOTATIONS:
                annotations.pop(name, None)
            if not annotations:
                del metadata["annotations"]
    if _is_secret(result) and isinstance(result.get("stringData"), Mapping):
        # stringData is write-only: the API server merges it into data, base64-encoded.
        data = dict(result.get("data") or {})
        for key, value in result.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        result["data"] = data
    return result


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, Mapping) and "name" in item for item in items)


def _same_scalar(desired: Any, live: Any) -> bool:
    if isinstance(desired, bool) or isinstance(live, bool):
        return False
    if isinstance(desired, int | float) and isinstance(live, str):
        return live == str(desired)
    if isinstance(desired, str) and isinstance(live, int | float):
        return desired == str(live)
    return False


def project(live: Any, desired: Any) -> Any:
    """``live`` restricted to the fields present in ``desired`` (server-side apply view)."""
    if isinstance(desired, Mapping) and isinstance(live, Mapping):
        projected = {}
        for key, wanted in desired.items():
            if key in live:
                projected[key] = project(live[key], wanted)
            elif isinstance(wanted, Mapping | list) and not wanted:
                projected[key] = wanted  # an empty map or list is the same as none
        return projected
    if isinstance(desired, list) and isinstance(live, list):
        if desired and live and _named(desired) and _named(live):
            by_name = {item["name"]: item for item in live}
            return [project(by_name[item["name"]], item) for item in desired
                    if item["name"] in by_name]
        return [project(item, wanted) for item, wanted in zip(live, desired, strict=False)] \
            + live[len(desired):]
    if _same_scalar(desired, live):
        return desired
    return live


def normalise(desired: Mapping[str, Any], live: Mapping[str, Any]) -> tuple[dict[str, Any],
                                                                            dict[str, Any]]:
    """The two sides as compared: server fields stripped, live projected onto desired."""
    wanted = strip_server_fields(desired)
    current = strip_server_fields(live)
    if _is_secret(wanted):
        current = _masked_like(wanted, current)
    projected: dict[str, Any] = project(current, wanted)
    return wanted, projected


def _masked_like(wanted: Mapping[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """Live Secret values masked wherever the desired one is masked (a bundle served by the
    api, orchestrator.domain.masking): such a Secret is compared by its keys only."""
    desired_data, live_data = wanted.get("data"), live.get("data")
    if not isinstance(desired_data, Mapping) or not isinstance(live_data, Mapping):
        return live
    masked = {key: MASK if desired_data.get(key) == MASK else value
              for key, value in live_data.items()}
    return {**live, "data": masked}


def _redact_pair(desired: dict[str, Any] | None,
                 live: dict[str, Any] | None) -> tuple[dict[str, Any] | None,
                                                       dict[str, Any] | None]:
    desired_data = (desired or {}).get("data")
    live_data = (live or {}).get("data")
    desired_data = desired_data if isinstance(desired_data, Mapping) else {}
    live_data = live_data if isinstance(live_data, Mapping) else {}
    if desired is not None and "data" in desired:
        desired = {**desired, "data": {
            key: REDACTED if live is None or live_data.get(key) == value else REDACTED_CHANGED
            for key, value in desired_data.items()}}
    if live is not None and "data" in live:
        live = {**live, "data": {key: REDACTED for key in live_data}}
    return desired, live


def _yaml_lines(obj: Mapping[str, Any] | None) -> list[str]:
    if obj is None:
        return []
    text = yaml.safe_dump(dict(obj), sort_keys=True, default_flow_style=False,
                          allow_unicode=True)
    return text.splitlines()


def _unified(key: ObjectKey, desired: dict[str, Any] | None, live: dict[str, Any] | None,
             secret: bool, labels: tuple[str, str] = ("live", "desired")) -> str:
    if secret:
        desired, live = _redact_pair(desired, live)
    lines = difflib.unified_diff(_yaml_lines(live), _yaml_lines(desired),
                                 fromfile=f"{labels[0]}/{key}", tofile=f"{labels[1]}/{key}",
                                 lineterm="")
    return "\n".join(lines) + "\n"


def diff_object(desired: Mapping[str, Any] | None,
                live: Mapping[str, Any] | None) -> ObjectDiff | None:
    """How ``live`` differs from ``desired``; None when in sync (or both absent)."""
    if live is None:
        if desired is None:
            return None
        wanted = strip_server_fields(desired)
        return ObjectDiff(object_key(desired), "added",
                          _unified(object_key(desired), wanted, None, _is_secret(desired)))
    if desired is None:
        current = strip_server_fields(live)
        return ObjectDiff(object_key(live), "removed",
                          _unified(object_key(live), None, current, _is_secret(live)))
    wanted, projected = normalise(desired, live)
    if wanted == projected:
        return None
    key = object_key(desired)
    return ObjectDiff(key, "changed", _unified(key, wanted, projected, _is_secret(desired)))


def diff(desired: Iterable[Mapping[str, Any]],
         live: Iterable[Mapping[str, Any]]) -> list[ObjectDiff]:
    """Every object that differs between ``desired`` and ``live``, sorted by identity.

    ``live`` holds the live objects Conveyor manages for the environment (those in its
    inventory that still exist); one of them absent from ``desired`` is "removed".
    """
    wanted = {object_key(obj): obj for obj in desired}
    current = {object_key(obj): obj for obj in live}
    diffs = []
    for key in sorted(wanted.keys() | current.keys()):
        found = diff_object(wanted.get(key), current.get(key))
        if found is not None:
            diffs.append(found)
    return diffs


def diff_revisions(new: Iterable[Mapping[str, Any]],
                   old: Iterable[Mapping[str, Any]]) -> list[ObjectDiff]:
    """What a change of desired state changed, object by object, between two bundles.

    Both sides are manifests, so they are compared exactly (no server-side-apply projection
    as in ``diff``: a field the change removed is a change). Secret values are redacted the
    same way; the text runs from ``before/`` to ``after/``.
    """
    after = {object_key(obj): strip_server_fields(obj) for obj in new}
    before = {object_key(obj): strip_server_fields(obj) for obj in old}
    out = []
    for key in sorted(after.keys() | before.keys()):
        a, b = after.get(key), before.get(key)
        if a == b:
            continue
        change: Change = "added" if b is None else "removed" if a is None else "changed"
        out.append(ObjectDiff(key, change, _unified(key, a, b, _is_secret(a or b or {}),
                                                     ("before", "after"))))
    return out


def summarise(diffs: Iterable[ObjectDiff]) -> str:
    """A few lines for people: counts, then one line per object (+ added, ~ changed, - removed)."""
    items = sorted(diffs, key=lambda d: d.key)
    if not items:
        return "No differences."
    counts = {change: sum(1 for d in items if d.change == change) for change in _SYMBOLS}
    parts = ", ".join(f"{count} {change}" for change, count in counts.items() if count)
    noun = "object differs" if len(items) == 1 else "objects differ"
    return "\n".join([f"{len(items)} {noun}: {parts}", *(f"  {d}" for d in items)])
