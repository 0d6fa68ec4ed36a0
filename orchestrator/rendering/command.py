"""``conveyor render PATH [--env NAME] [-o yaml|json]``: render locally, exactly as the service.

The enclosing git repository of PATH (the nearest parent holding ``.git``; PATH itself when
there is none) is the boundary nothing may be read outside of. With ``--env``, the
environment's ``path`` and ``render:`` settings come from the repository's conveyor.yaml;
without, PATH is rendered with auto-detection. Objects go to stdout in bundle order (a YAML
multi-document stream or a JSON list), every error to stderr on its own line; exit 1 on error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import yaml

from orchestrator.domain.bundle import canonical_objects
from orchestrator.domain.config import CONFIG_FILE, parse_config
from orchestrator.errors import ConveyorError, ManifestError
from orchestrator.rendering.api import render
from orchestrator.rendering.model import RenderTools

OUTPUTS = ("yaml", "json")


def repository_root(path: Path) -> Path:
    """The nearest directory at or above ``path`` holding ``.git``; ``path`` if none does."""
    start = path if path.is_dir() else path.parent
    for candidate in (start, *start.parents):
        if (candidate / ".git").exists():
            return candidate
    return start


def format_objects(objects: list[dict[str, Any]], output: str) -> str:
    ordered = canonical_objects(objects)
    if output == "json":
        return json.dumps(ordered, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump_all(ordered, sort_keys=False, default_flow_style=False,
                              allow_unicode=True) if ordered else ""


def _errors(exc: ConveyorError) -> list[str]:
    return list(exc.errors) if isinstance(exc, ManifestError) else [exc.message]


def render_command(path: Path, env: str | None, output: str, *,
                   stdout: TextIO | None = None, stderr: TextIO | None = None,
                   tools: RenderTools | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    if output not in OUTPUTS:
        err.write(f"error: unknown output format {output!r} (use yaml or json)\n")
        return 1
    path = path.resolve()
    if not path.exists():
        err.write(f"error: {path} does not exist\n")
        return 1
    root = repository_root(path)
    settings: Mapping[str, Any] | None = None
    try:
        if env is not None:
            config_file = root / CONFIG_FILE
            if not config_file.is_file():
                err.write(f"error: --env {env} given but {root}/{CONFIG_FILE} does not exist\n")
                return 1
            config = parse_config(config_file.read_text(encoding="utf-8"))
            if env not in config.environments:
                known = ", ".join(sorted(config.environments)) or "none"
                err.write(f"error: {CONFIG_FILE}: no environment {env!r} (known: {known})\n")
                return 1
            env_path = config.environments[env].path
            settings = config.environments[env].render
        else:
            env_path = path.relative_to(root).as_posix() if path != root else ""
            if env_path == ".":
                env_path = ""
        result = render(root, env_path, settings, tools=tools or RenderTools())
    except ConveyorError as exc:
        for line in _errors(exc):
            err.write(f"{line}\n")
        return 1
    out.write(format_objects([m.obj for m in result.manifests], output))
    return 0
