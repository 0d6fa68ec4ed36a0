"""Include/exclude globs, as Argo CD's ``directory.include`` / ``directory.exclude`` use them.

A pattern with no ``/`` matches a file's name in any directory (``*.yaml``); a pattern with a
``/`` matches the path relative to the environment directory (``base/*.yaml``). ``*`` and
``?`` stay within one path segment, ``**`` crosses directories, ``{a,b}`` is an alternative
and ``[...]`` a character class.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    depth = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "{":
            out.append("(?:")
            depth += 1
        elif c == "}" and depth:
            out.append(")")
            depth -= 1
        elif c == "," and depth:
            out.append("|")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    out.append(")" * depth)
    return re.compile("".join(out) + r"\Z")


def matches(pattern: str, rel: str) -> bool:
    """Does ``rel`` (a path relative to the environment directory) match ``pattern``?"""
    pattern = pattern.removeprefix("./")
    if "/" not in pattern:
        return _compile(pattern).match(rel.rsplit("/", 1)[-1]) is not None
    return _compile(pattern.lstrip("/")).match(rel) is not None


def selected(rel: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    include = tuple(include)
    if include and not any(matches(p, rel) for p in include):
        return False
    return not any(matches(p, rel) for p in exclude)
