"""The ``directories`` generator's matching: which repository directories a rule selects, and
the parameters one directory gives a template (``{{path}}``, ``{{path.basename}}``,
``{{path.basenameNormalized}}``, ``{{path[N]}}``). Pure; ``generators.py`` parses and expands.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class DirectoryRule:
    path: str  # a glob over repository directories; '*' never crosses '/'
    exclude: bool = False


def dir_params(path: str) -> dict[str, Any]:
    parts = path.split("/")
    base = parts[-1]
    return {"path": {"": path, "basename": base,
                     "basenameNormalized": re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-"),
                     "segments": parts}}


def matches(pattern: str, path: str) -> bool:
    want, have = pattern.split("/"), path.split("/")
    return len(want) == len(have) and all(fnmatch.fnmatchcase(h, w)
                                          for w, h in zip(want, have, strict=True))


def match_directories(rules: Sequence[DirectoryRule], dirs: Sequence[str]) -> list[str]:
    """The directories the rules select, sorted; an exclude wins over any include."""
    hit = matches
    chosen = []
    for path in sorted(set(dirs)):
        if any(hit(r.path, path) for r in rules if r.exclude):
            continue
        if any(hit(r.path, path) for r in rules if not r.exclude):
            chosen.append(path)
    return chosen
