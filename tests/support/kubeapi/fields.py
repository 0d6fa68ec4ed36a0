"""Coarse server-side-apply bookkeeping: field paths, ``fieldsV1`` and the apply merge.

The real API server tracks ownership with structured-merge-diff, which knows each type's
schema (associative lists keyed by ``name``, sets, atomic structs). This fake knows no schema:

- a *field* is a path of map keys down to a leaf; a leaf is any non-map value or an empty map;
- **lists are atomic**: ``spec.template.spec.containers`` is one field, owned as a whole, so two
  managers editing different containers conflict here where the real server would merge them;
- a conflict is another manager owning the *same* path with a *different* value (shared
  ownership when the values are equal, as in the real server); a path owned by another manager
  that is only a prefix of ours (or the reverse) is not reported;
- fields this manager owned before and omits now are removed unless another manager owns them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

JSON = dict[str, Any]
Path = tuple[str, ...]

# Identity and server-owned fields: never tracked, never merged from a client.
_IGNORED: frozenset[Path] = frozenset({
    ("apiVersion",), ("kind",), ("status",),
    ("metadata", "name"), ("metadata", "namespace"), ("metadata", "uid"),
    ("metadata", "resourceVersion"), ("metadata", "generation"),
    ("metadata", "creationTimestamp"), ("metadata", "managedFields"),
    ("metadata", "deletionTimestamp"), ("metadata", "selfLink"),
})


def leaf_paths(obj: JSON, prefix: Path = ()) -> set[Path]:
    """Every tracked leaf path of ``obj``."""
    out: set[Path] = set()
    for key, value in obj.items():
        path = (*prefix, key)
        if path in _IGNORED:
            continue
        if isinstance(value, dict) and value:
            out |= leaf_paths(value, path)
        else:
            out.add(path)
    return out


def to_fields_v1(paths: set[Path]) -> JSON:
    root: JSON = {}
    for path in sorted(paths):
        node = root
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return root


def from_fields_v1(fields: JSON, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    children = {k: v for k, v in fields.items() if k.startswith("f:")}
    if not children and prefix:
        out.add(prefix)
    for key, sub in children.items():
        out |= from_fields_v1(sub if isinstance(sub, dict) else {}, (*prefix, key[2:]))
    return out


_ATOMS = frozenset({str, int, float, bool, type(None)})


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON document (what the store holds), several times faster than
    ``copy.deepcopy``: new dicts and lists, the same immutable leaves; ``deepcopy`` for any other
    type (a date from a YAML body, say)."""
    kind = type(value)
    if kind is dict:
        return {k: json_copy(v) for k, v in value.items()}
    if kind is list:
        return [json_copy(v) for v in value]
    return value if kind in _ATOMS else copy.deepcopy(value)


_MISSING = object()


def get_path(obj: JSON, path: Path) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def delete_path(obj: JSON, path: Path) -> None:
    """Remove a leaf, then any map that became empty on the way up."""
    chain: list[JSON] = []
    node: Any = obj
    for key in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return
        chain.append(node)
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    for parent, key in zip(reversed(chain), reversed(path[:-1]), strict=True):
        if parent[key] == {} and len(path) > 1 and (key != "metadata" or parent is not obj):
            del parent[key]
        else:
            break


def deep_merge(live: JSON, applied: JSON, prefix: Path = ()) -> None:
    """Merge ``applied`` into ``live`` in place: maps recursively, everything else replaced."""
    for key, value in applied.items():
        path = (*prefix, key)
        if path in _IGNORED:
            continue
        if isinstance(value, dict) and value and isinstance(live.get(key), dict):
            deep_merge(live[key], value, path)
        else:
            live[key] = json_copy(value)


def conflicts(live: JSON, applied: JSON, mine: set[Path],
              others: dict[str, set[Path]]) -> Iterator[tuple[str, Path]]:
    """(manager, path) for each field another manager owns with a value we would change."""
    for manager, owned in sorted(others.items()):
        for path in sorted(mine & owned):
            if get_path(live, path) != get_path(applied, path):
                yield manager, path


def dotted(path: Path) -> str:
    return "".join(f".{p}" for p in path)
