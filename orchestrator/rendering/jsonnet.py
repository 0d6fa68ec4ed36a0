"""Jsonnet, evaluated by the ``jsonnet`` PyPI module in a boxed worker subprocess.

Entry files: ``jsonnet.main`` (relative to the environment directory) if set, else
``main.jsonnet`` if present, else every ``*.jsonnet`` file of the directory (not recursive;
``*.libsonnet`` are libraries). YAML files next to them are *not* read as manifests: jsonnet
environments use them as data (``std.parseYaml(importstr 'x.yaml')``).

Output may be an object, an array of objects (nested arrays flattened), a ``kind: List``, or
an object of named objects (kubecfg/Tanka style: a mapping with neither ``apiVersion`` nor
``kind`` whose values are objects or arrays is walked).

Evaluation runs in a subprocess (``_jsonnet_worker.py``) under the render's timeout and memory
limit - jsonnet is Turing-complete, so a repository could otherwise hang or exhaust the
service. Imports resolve relative to the importing file, then ``libs`` (repo-relative), only
inside the repository. ``extVars``/``tlas``: strings as strings, other values as code.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import _jsonnet

from orchestrator.errors import PermanentError
from orchestrator.rendering.model import Manifest, RenderLimits
from orchestrator.rendering.parse import Located, decode, is_list
from orchestrator.rendering.safety import display, join_rel, norm_rel, read_bytes, resolve, run_tool
from orchestrator.rendering.settings import JsonnetSettings

WORKER = Path(__file__).with_name("_jsonnet_worker.py")


def version() -> str:
    return f"jsonnet {str(_jsonnet.version).lstrip('v')}"


def entry_files(root: Path, env_rel: str, settings: JsonnetSettings) -> list[str]:
    if settings.main:
        rel = join_rel(env_rel, settings.main)
        if rel is None:
            raise PermanentError(f"render settings: jsonnet.main {settings.main!r} points "
                                 "outside the repository", reason="PathEscape")
        return [rel]
    env_dir = resolve(root, env_rel, referrer=display(env_rel))
    if (env_dir / "main.jsonnet").is_file():
        return [join_rel(env_rel, "main.jsonnet") or "main.jsonnet"]
    return sorted(join_rel(env_rel, p.name) or p.name for p in env_dir.glob("*.jsonnet")
                  if not p.name.startswith("."))


def _collect(value: Any, source: str, out: list[Located], errors: list[str]) -> None:
    if isinstance(value, list):
        for item in value:
            _collect(item, source, out, errors)
    elif is_list(value):
        for item in value["items"]:
            _collect(item, source, out, errors)
    elif isinstance(value, dict):
        if "apiVersion" not in value and "kind" not in value and value and \
                all(isinstance(v, dict | list) for v in value.values()):
            for key in sorted(value):
                _collect(value[key], source, out, errors)
        else:
            out.append(Located(Manifest(value, source)))
    elif value is not None:
        errors.append(f"{source}: output must be an object or an array of objects, got "
                      f"{type(value).__name__}")


_STATIC = re.compile(r"^(?P<kind>[A-Z ]+ERROR): (?P<loc>[^:\s]+:\d+:\d+)(?:-\d+)?: (?P<msg>.*)")


def _location_first(message: str) -> str:
    """'RUNTIME ERROR: x\\n\\tfile:3:5-9\\t...' -> 'file:3:5: RUNTIME ERROR: x (trace...)'."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "jsonnet evaluation failed"
    head, trace = lines[0], lines[1:]
    static = _STATIC.match(head)
    if static:
        return f"{static['loc']}: {static['kind']}: {static['msg']}"
    for line in trace:
        loc = line.split("\t", 1)[0].split(" ", 1)[0]
        parts = loc.rsplit(":", 2)
        if len(parts) == 3 and parts[1].isdigit():
            column = parts[2].split("-", 1)[0].split(")", 1)[0]
            return f"{parts[0]}:{parts[1]}:{column}: {head}"
    return head


def render_jsonnet(root: Path, env_rel: str, settings: JsonnetSettings, limits: RenderLimits,
                   values: Mapping[str, Any]) -> tuple[list[Located], list[str], str]:
    files = entry_files(root, env_rel, settings)
    if not files:
        raise PermanentError(f"{display(env_rel)}: no *.jsonnet file to evaluate",
                             reason="NothingToRender")
    errors: list[str] = []
    payload: list[dict[str, str]] = []
    for rel in files:
        try:
            text, problems = decode(read_bytes(root, rel, limits), rel)
        except PermanentError as exc:
            errors.append(str(exc))
            continue
        if text is None:
            errors.extend(problems)
            continue
        payload.append({"filename": rel, "snippet": text})
    libs = []
    for lib in settings.libs:
        lib_rel = norm_rel(lib)
        if lib_rel is None:
            errors.append(f"render settings: jsonnet.libs {lib!r} points outside the repository")
            continue
        libs.append(lib_rel)
    if errors:
        return [], errors, ""
    ext_codes = dict(settings.ext_codes)
    if values:
        ext_codes.setdefault("values", json.dumps(values))
    request = {"root": str(root.resolve()), "files": payload, "libs": libs,
               "ext_vars": dict(settings.ext_vars), "ext_codes": ext_codes,
               "tla_vars": dict(settings.tla_vars), "tla_codes": dict(settings.tla_codes),
               "max_file_bytes": limits.max_file_bytes}
    out = run_tool([sys.executable, "-I", str(WORKER)], cwd=root.resolve(), limits=limits,
                   what=f"jsonnet {display(env_rel)}", stdin=json.dumps(request).encode())
    reply = json.loads(out.stdout)
    if "error" in reply:
        return [], [_location_first(reply["error"])], version()
    items: list[Located] = []
    for rel, value in zip(files, reply["results"], strict=True):
        _collect(value, rel, items, errors)
    return items, errors, version()
