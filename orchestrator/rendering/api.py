"""``render``: one environment directory of a repository snapshot -> validated objects.

The pipeline is the same for every format: check the settings, confine the environment path
to the snapshot, pick the renderer (configured or detected), render, then validate. Problems
are collected and raised together as one ``ManifestError`` listing each ``file:line:column:
reason``; misuse (bad settings, a missing tool, an escape from the repository that stops a
render before it starts) is a ``PermanentError``. Nothing here is transient: the same
snapshot renders the same way every time, so the caller should not retry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import ManifestError, PermanentError
from orchestrator.rendering import plain
from orchestrator.rendering.detect import detect
from orchestrator.rendering.helm import render_helm
from orchestrator.rendering.jinja import render_jinja
from orchestrator.rendering.jsonnet import render_jsonnet
from orchestrator.rendering.kustomize import (
    PrecheckMemo,
    find_binary,
    precheck_graph,
    render_kustomize,
    tool_version,
)
from orchestrator.rendering.kustomize_batch import batchable, render_batch, supports_fifo
from orchestrator.rendering.model import RenderLimits, RenderResult, RenderTools
from orchestrator.rendering.parse import Located
from orchestrator.rendering.safety import EscapeError, display, norm_rel, resolve
from orchestrator.rendering.settings import RenderSettings, parse_settings
from orchestrator.rendering.validate import mask, validate

_DEFAULT_LIMITS = RenderLimits()
_DEFAULT_TOOLS = RenderTools()
SPLIT_AT = 6  # a failed batch of this many overlays or more is retried as two halves


@dataclass(frozen=True, slots=True)
class RenderRequest:
    """One environment of a ``render_many`` call: its path and the repository's settings."""

    env_path: str
    settings: Mapping[str, Any] | None = None


def render(root: Path, env_path: str, settings: Mapping[str, Any] | None = None,
           *, limits: RenderLimits = _DEFAULT_LIMITS, tools: RenderTools = _DEFAULT_TOOLS,
           values: Mapping[str, Any] | None = None) -> RenderResult:
    """Render ``env_path`` (repo-relative, "" for the root) of the snapshot at ``root``.

    ``values`` are per-render overrides: merged last into helm values (like ``--set``) and into
    jinja's context, and given to jsonnet as the ext code variable ``values``; plain and
    kustomize ignore them. ``tools`` are the operator's choices (programs, remote bases);
    ``settings`` the repository's. Blocking: run it in a thread.
    """
    return _render(root, env_path, settings, limits, tools, values, None)


def render_many(root: Path, requests: Sequence[RenderRequest], *,
                limits: RenderLimits = _DEFAULT_LIMITS, tools: RenderTools = _DEFAULT_TOOLS
                ) -> list[RenderResult | Exception]:
    """``render`` of each request on one snapshot: its result, or the exception ``render``
    raises for it. The Kustomize overlays among them that may share a tool run are rendered
    together (``kustomize_batch``), each with exactly the result it has alone; the snapshot's
    shared directories are checked once (``PrecheckMemo``). Blocking: run it in a thread."""
    memo = PrecheckMemo()
    results: list[RenderResult | Exception | None] = [None] * len(requests)
    batch: list[tuple[int, str, str, RenderSettings]] = []  # index, path, namespace, settings
    namespaces: set[str] = set()
    for i, request in enumerate(requests):
        try:
            parsed, env_rel, kind, run_limits = _prepare(root, request.env_path,
                                                         request.settings, limits, tools)
        except Exception as exc:
            results[i] = exc
            continue
        if kind != "kustomize" or not env_rel:
            continue
        errors, graph = precheck_graph(root, env_rel, tools, run_limits, memo)
        namespace = batchable(graph) if not errors else None
        if namespace is not None and namespace not in namespaces:
            namespaces.add(namespace)
            batch.append((i, env_rel, namespace, parsed))
    if len(batch) > 1:
        _render_batch(root, batch, limits, tools, results)
    for i, request in enumerate(requests):
        if results[i] is None:
            try:
                results[i] = _render(root, request.env_path, request.settings, limits, tools,
                                     None, memo)
            except Exception as exc:
                results[i] = exc
    return [r for r in results if r is not None]


def _render_batch(root: Path, batch: list[tuple[int, str, str, RenderSettings]],
                  limits: RenderLimits, tools: RenderTools,
                  results: list[RenderResult | Exception | None]) -> None:
    """Fill ``results`` for the overlays one tool run renders faithfully; leave the others."""
    if tools.remote_base_hosts and not limits.network:
        limits = replace(limits, network=True)
    try:
        argv, binary = find_binary(tools, root)
        version = tool_version(binary, argv, root, limits)
    except PermanentError:
        return  # each render alone says so
    if not supports_fifo(version):
        return
    pending = [batch]
    while pending:
        group = pending.pop()
        parts = render_batch(root, [b[1] for b in group], [b[2] for b in group], argv,
                             version, limits)
        if parts is None:  # timed out: each alone, each with its own time limit
            continue
        if parts and parts[0] is None:
            # one broken overlay (or a conflict) fails the whole run: halves of a big batch
            # try again, so it costs a few runs, not one per overlay; small ones go alone
            if len(group) >= SPLIT_AT:
                half = len(group) // 2
                pending += [group[half:], group[:half]]
            continue
        for (i, _, _, parsed), part in zip(group, parts, strict=True):
            if part is not None:
                items, errors, tool = part
                try:
                    results[i] = _finish(items, errors, parsed, limits, "kustomize", tool)
                except Exception as exc:
                    results[i] = exc


def _prepare(root: Path, env_path: str, settings: Mapping[str, Any] | None,
             limits: RenderLimits, tools: RenderTools
             ) -> tuple[RenderSettings, str, str, RenderLimits]:
    """(parsed settings, repo-relative environment path, renderer, limits), or raises."""
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
    return parsed, env_rel, parsed.type or detect(env_dir), limits


def _render(root: Path, env_path: str, settings: Mapping[str, Any] | None,
            limits: RenderLimits, tools: RenderTools, values: Mapping[str, Any] | None,
            memo: PrecheckMemo | None) -> RenderResult:
    parsed, env_rel, kind, limits = _prepare(root, env_path, settings, limits, tools)
    extra = dict(values or {})

    items: list[Located]
    errors: list[str]
    if kind == "plain":
        items, errors = plain.render_directory(root, env_rel, parsed, limits)
        version = plain.VERSION
    elif kind == "kustomize":
        items, errors, version = render_kustomize(root, env_rel, tools, limits, memo)
    elif kind == "jsonnet":
        items, errors, version = render_jsonnet(root, env_rel, parsed.jsonnet, limits, extra)
    elif kind == "jinja":
        items, errors, version = render_jinja(root, env_rel, parsed, limits, extra)
    else:  # helm
        items, errors, version = render_helm(root, env_rel, parsed.helm, limits, extra, tools)
    return _finish(items, errors, parsed, limits, kind, version)


def _finish(items: list[Located], errors: list[str], parsed: RenderSettings,
            limits: RenderLimits, kind: str, version: str) -> RenderResult:
    if not errors:
        errors = validate(items, parsed.validate, limits.max_objects)
    if errors:  # whatever quoted a Secret's value (a template, a tool) says <redacted> instead
        raise ManifestError(mask(errors, items))
    return RenderResult(tuple(i.manifest for i in items), kind, version)
