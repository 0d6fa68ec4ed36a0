"""Jinja2 templates: ``*.yaml.j2`` / ``*.yml.j2`` / ``*.json.j2`` rendered, then parsed.

The environment directory is walked like a plain directory (same include/exclude/recurse);
plain manifests are read as they are and every ``*.j2`` file is rendered first. The context is
``jinja.values`` with the render's ``values`` merged over it (top-level keys are variables,
and the whole mapping is also ``values``). Filters added: ``to_yaml``, ``to_json``,
``b64encode``, ``b64decode``.

Templates run in ``jinja2.sandbox.ImmutableSandboxedEnvironment`` with ``StrictUndefined`` (a
missing value is an error, not an empty string). ``{% include %}``/``{% import %}`` names
resolve against the environment directory, then the repository root, never outside it
(symlinks included). Rendering happens in a boxed worker subprocess under the render's timeout
and memory limit: the sandbox stops escapes, not ``{% for %}`` nests or ``'x' * 10**10``.

Errors name the template and line (``envs/dev/app.yaml.j2:7: 'image' is undefined``); a YAML
error in the output names the template and the line *of the rendered output*.
"""

from __future__ import annotations

import base64
import json
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from orchestrator.errors import PermanentError
from orchestrator.rendering import plain
from orchestrator.rendering.model import RenderLimits
from orchestrator.rendering.parse import Located, decode, parse_file, parse_json, parse_yaml
from orchestrator.rendering.safety import join_rel, read_bytes, run_tool
from orchestrator.rendering.settings import RenderSettings

SUFFIXES = (*plain.MANIFEST_SUFFIXES, ".j2")


def version() -> str:
    return f"jinja2 {jinja2.__version__}"


class RepoLoader(jinja2.BaseLoader):
    """Loads templates by name from the environment directory, then the repository root."""

    def __init__(self, root: Path, search: list[str], limits: RenderLimits) -> None:
        self.root = root
        self.search = search
        self.limits = limits

    def get_source(self, environment: jinja2.Environment, template: str
                   ) -> tuple[str, str, Callable[[], bool]]:
        if template.startswith("/"):
            raise jinja2.TemplateNotFound(f"{template} (absolute names are refused)")
        for base in self.search:
            rel = join_rel(base, template)
            if rel is None:
                raise jinja2.TemplateNotFound(f"{template} (points outside the repository)")
            if not (self.root / rel).is_file() and not (self.root / rel).is_symlink():
                continue
            # read_bytes refuses symlinks leaving the repository and oversized files
            data = read_bytes(self.root, rel, self.limits, referrer=f"template {template!r}")
            return data.decode("utf-8-sig"), rel, lambda: True
        raise jinja2.TemplateNotFound(template)


def _environment(root: Path, search: list[str], limits: RenderLimits
                 ) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=RepoLoader(root, search, limits), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, autoescape=False)
    env.filters["to_yaml"] = lambda v: yaml.safe_dump(v, default_flow_style=False,
                                                      sort_keys=False).rstrip("\n")
    env.filters["to_json"] = lambda v: json.dumps(v, sort_keys=True)
    env.filters["b64encode"] = lambda v: base64.b64encode(str(v).encode()).decode()
    env.filters["b64decode"] = lambda v: base64.b64decode(str(v)).decode()
    return env


def _template_line(exc: BaseException, names: set[str]) -> tuple[str, int] | None:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename in names and frame.lineno:
            return frame.filename, frame.lineno
    return None


def render_templates(request: Mapping[str, Any]) -> dict[str, Any]:
    """Worker side: render each template; ``{"rendered": {file: text}, "errors": [...]}``."""
    root = Path(request["root"])
    limits = RenderLimits(max_file_bytes=request["max_file_bytes"])
    env_rel = request["env"]
    env = _environment(root, [env_rel, ""] if env_rel else [""], limits)
    context = dict(request["values"])
    context.setdefault("values", request["values"])
    rendered: dict[str, str] = {}
    errors: list[str] = []
    for rel in request["templates"]:
        name = rel[len(env_rel) + 1:] if env_rel else rel
        try:
            rendered[rel] = env.get_template(name).render(context)
        except jinja2.TemplateSyntaxError as exc:
            errors.append(f"{exc.filename or rel}:{exc.lineno}: template syntax error: "
                          f"{exc.message}")
        except PermanentError as exc:
            errors.append(f"{rel}: {exc}")
        except jinja2.TemplateNotFound as exc:
            errors.append(f"{rel}: template not found: {exc.message}")
        except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError, KeyError,
                IndexError, AttributeError, RecursionError) as exc:
            where = _template_line(exc, {rel, *(join_rel(b, name) or "" for b in [env_rel])})
            place = f"{where[0]}:{where[1]}" if where else rel
            message = getattr(exc, "message", None) or str(exc)
            errors.append(f"{place}: {type(exc).__name__}: {message}")
    return {"rendered": rendered, "errors": errors}


def _worker_main() -> None:
    json.dump(render_templates(json.load(sys.stdin)), sys.stdout)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def render_jinja(root: Path, env_rel: str, settings: RenderSettings, limits: RenderLimits,
                 values: Mapping[str, Any]) -> tuple[list[Located], list[str], str]:
    files, errors = plain.walk(root, env_rel, settings, SUFFIXES)
    templates = [f for f in files if f.endswith(".j2")]
    items: list[Located] = []
    for rel in files:
        if rel in templates:
            continue
        try:
            text, problems = decode(read_bytes(root, rel, limits), rel)
        except PermanentError as exc:
            errors.append(str(exc))
            continue
        if text is None:
            errors.extend(problems)
            continue
        found, problems = parse_file(text, rel)
        items.extend(found)
        errors.extend(problems)
    for rel in templates:  # size and escape checks before the worker reads them
        try:
            read_bytes(root, rel, limits)
        except PermanentError as exc:
            errors.append(str(exc))
    if errors or not templates:
        return items, errors, version()
    context = _merge(settings.jinja_values, values)
    request = {"root": str(root.resolve()), "env": env_rel, "templates": templates,
               "values": context, "max_file_bytes": limits.max_file_bytes}
    try:
        payload = json.dumps(request).encode()
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"render settings: jinja values are not plain data: {exc}",
                             reason="InvalidRenderSettings") from None
    code = "from orchestrator.rendering.jinja import _worker_main; _worker_main()"
    out = run_tool([sys.executable, "-I", "-c", code], cwd=root.resolve(), limits=limits,
                   what=f"jinja {env_rel or '.'}", stdin=payload)
    reply = json.loads(out.stdout)
    errors.extend(reply["errors"])
    for rel in templates:
        text = reply["rendered"].get(rel)
        if text is None:
            continue
        parse = parse_json if rel.endswith(".json.j2") else parse_yaml
        found, problems = parse(text, rel)
        items.extend(found)
        errors.extend(problems)
    return items, errors, version()
