"""Label and field selectors as the API server parses them (``labelSelector=``/``fieldSelector=``).

Supported label syntax: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``
(exists) and ``!k`` (does not exist), comma-separated and ANDed. Field selectors support
``metadata.name`` and ``metadata.namespace`` with ``=``, ``==`` and ``!=``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Matcher = Callable[[Mapping[str, str]], bool]

_SET = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*$")


class SelectorError(ValueError):
    pass


def _split(selector: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(selector):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(selector[start:i])
            start = i + 1
    parts.append(selector[start:])
    return [p for p in parts if p.strip()]


def _term(text: str) -> Matcher:
    if m := _SET.match(text):
        key, op, raw = m.group(1), m.group(2), m.group(3)
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ.match(text):
        key, op, value = m.group(1), m.group(2), m.group(3)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS.match(text):
        negate, key = m.group(1) == "!", m.group(2)
        return lambda labels: (key in labels) != negate
    raise SelectorError(f"unable to parse requirement: {text.strip()!r}")


def label_matcher(selector: str) -> Matcher:
    terms = [_term(t) for t in _split(selector)]
    return lambda labels: all(t(labels) for t in terms)


def field_matcher(selector: str) -> Callable[[Mapping[str, Any]], bool]:
    checks: list[tuple[str, str, str]] = []
    for term in _split(selector):
        m = _EQ.match(term)
        if not m or m.group(1) not in ("metadata.name", "metadata.namespace"):
            raise SelectorError(f"field label not supported: {term.strip()!r}")
        checks.append((m.group(1).split(".")[1], m.group(2), m.group(3)))

    def match(meta: Mapping[str, Any]) -> bool:
        return all((meta.get(f, "") == v) != (op == "!=") for f, op, v in checks)

    return match
