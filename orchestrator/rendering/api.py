"""``render``: one environment directory of a repository snapshot -> validated objects.

The pipeline is the same for every format: check the settings, confine the environment path
to the snapshot, pick the renderer (configured or detected), render, then validate. Problems
are collected and raised together as one ``ManifestError`` listing each ``file:line:column:
reason``; misuse (bad settings, a missing tool, an escape from the repository that stops a
render before it starts) is a ``PermanentError``. Nothing here is transient: the same
snapshot renders the same way every time, so the caller should not retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.errors import ManifestError, PermanentError
from orchestrator.rendering import plain
from orchestrator.rendering.detect import detect
from orchestrator.rendering.helm import render_helm
from orchestrator.rendering.jinja import render_jinja
from orchestrator.rendering.jsonnet import render_jsonnet
from orchestrator.rendering.kustomize import render_kustomize
from orchestrator.rendering.model import RenderLimits, RenderResult, RenderTools
from orchestrator.rendering.parse import Located
from orchestrator.rendering.safety import EscapeError, display, norm_rel, resolve
from orchestrator.rendering.settings import parse_settings
from orchestrator.rendering.validate import mask, validate

_DEFAULT_LIMITS = RenderLimits()
_DEFAULT_TOOLS = RenderTools()


def render(root: Path, env_path: str, settings: Mapping[str, Any] | None = None,
           *, limits: RenderLimits = _DEFAULT_LIMITS, tools: RenderTools = _DEFAULT_TOOLS,
           values: Mapping[str, Any] | None = None) -> RenderResult:
    """Render ``env_path`` (repo-relative, "" for the root) of the snapshot at ``root``.

    ``values`` are per-render overrides: merged last into helm values (like ``--set``) and into
    jinja's context, and given to jsonnet as the ext code variable ``values``; plain and
    kustomize ignore them. ``tools`` are the operator's choices (programs, remote bases);
    ``settings`` the repository's. Blocking: run it in a thread.
    """
    parsed = parse_settings(settings)
    if tools.remote_base_hosts and not limits.network:  # the operator opened it, for kustomize
        limits = replace(limits, network=True)
    env_rel = norm_rel(env_path.strip().rstrip("/") if env_path else "")
    if env_rel is None:
        raise EscapeError(f"environment path {env_path!r} points outside the repository")
    if not root.is_dir():
        raise PermanentError(f"repository snapshot {str(root)!r} is not a directory",
                             reason="NotADirectory")
    env_dir = resolve(root, env_rel, referrer=f"environment path {display(env_rel)!r}")
    if not env_dir.is_dir():
        raise PermanentError(f"environment path {display(env_rel)!r} is not a directory of "
                             "the repository", reason="NotADirectory")
    kind = parsed.type or detect(env_dir)
    extra = dict(values or {})

    items: list[Located]
    errors: list[str]
    if kind == "plain":
        items, errors = plain.render_directory(root, env_rel, parsed, limits)
        version = plain.VERSION
    elif kind == "kustomize":
        items, errors, version = render_kustomize(root, env_rel, tools, limits)
    elif kind == "jsonnet":
        items, errors, version = render_jsonnet(root, env_rel, parsed.jsonnet, limits, extra)
    elif kind == "jinja":
        items, errors, version = render_jinja(root, env_rel, parsed, limits, extra)
    else:  # helm
        items, errors, version = render_helm(root, env_rel, parsed.helm, limits, extra, tools)

    if not errors:
        errors = validate(items, parsed.validate, limits.max_objects)
    if errors:  # whatever quoted a Secret's value (a template, a tool) says <redacted> instead
        raise ManifestError(mask(errors, items))
    return RenderResult(tuple(i.manifest for i in items), kind, version)
