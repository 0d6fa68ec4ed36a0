"""Typed reads of an unstructured object, with Go's zero values for absent fields.

gitops-engine converts an unstructured object to its typed struct before assessing it: an
absent integer reads as 0, an absent string as "", and a field of the wrong type fails the
conversion, which ``GetResourceHealth`` reports as ``Unknown``. These helpers do the same on
plain mappings: absent or null gives the zero value, a wrong type raises ``MalformedObject``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class MalformedObject(ValueError):
    """A field has a type Kubernetes would never serve; the health is then Unknown."""


def field(obj: Mapping[str, Any], *path: str) -> Any:
    """The value at ``path``, or None when any step is absent or not a mapping."""
    value: Any = obj
    for step in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(step)
    return value


def _where(path: Sequence[str]) -> str:
    return ".".join(path)


def integer(obj: Mapping[str, Any], *path: str) -> int:
    """An integer field; absent or null reads as 0, as in a Go struct."""
    value = optional_integer(obj, *path)
    return 0 if value is None else value


def optional_integer(obj: Mapping[str, Any], *path: str) -> int | None:
    """An integer field that may be absent (a Go ``*int32``): None when absent or null."""
    value = field(obj, *path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedObject(f"{_where(path)} must be an integer, got {value!r}")
    return value


def string(obj: Mapping[str, Any], *path: str) -> str:
    """A string field; absent or null reads as ""."""
    value = field(obj, *path)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedObject(f"{_where(path)} must be a string, got {value!r}")
    return value


def boolean(obj: Mapping[str, Any], *path: str) -> bool:
    """A boolean field; absent or null reads as False."""
    value = field(obj, *path)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedObject(f"{_where(path)} must be a boolean, got {value!r}")
    return value


def mappings(obj: Mapping[str, Any], *path: str) -> list[Mapping[str, Any]]:
    """A list of mappings (conditions, container statuses); absent or null reads as []."""
    value = field(obj, *path)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise MalformedObject(f"{_where(path)} must be a list of mappings, got {value!r}")
    return list(value)


def items(obj: Mapping[str, Any], *path: str) -> list[Any]:
    """A list of anything; absent or null reads as []."""
    value = field(obj, *path)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedObject(f"{_where(path)} must be a list, got {value!r}")
    return list(value)


def conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``status.conditions`` of ``obj``."""
    return mappings(obj, "status", "conditions")


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The first condition of type ``kind`` in ``status.conditions``, or None."""
    for item in conditions(obj):
        if item.get("type") == kind:
            return item
    return None


def text(value: Any) -> str:
    """A condition's field as text ("" when absent), never failing on odd types."""
    return "" if value is None else str(value)


def loose_integer(value: Any) -> int | None:
    """A generation-like value read the tolerant way: an integer, or a string of digits.

    Anything else (a pod-template hash that older Argo Rollouts keep in
    ``status.observedGeneration``, a float, a boolean) is None: "cannot compare", never an error,
    so a controller's odd bookkeeping does not make its object Unknown.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def condition_map(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``status.conditions`` by type; the first of each type wins, as a controller lists it."""
    found: dict[str, Mapping[str, Any]] = {}
    for item in conditions(obj):
        found.setdefault(text(item.get("type")), item)
    return found


def is_true(condition: Mapping[str, Any] | None) -> bool:
    return condition is not None and condition.get("status") == "True"


def is_false(condition: Mapping[str, Any] | None) -> bool:
    return condition is not None and condition.get("status") == "False"


def message_of(condition: Mapping[str, Any], default: str = "") -> str:
    """A condition's message, else its reason, else ``default``."""
    return text(condition.get("message")) or text(condition.get("reason")) or default
