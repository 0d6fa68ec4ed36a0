"""Renderers: turn an environment directory of a repository snapshot into Kubernetes objects.

Formats (auto-detected per directory, or ``render.type``): plain YAML/JSON directories,
Kustomize (``kubectl kustomize``), Helm charts, Jsonnet and Jinja2 templates. The output is
what the reference tool produces, parsed into objects that remember their source, validated
(structure, duplicates, optionally the Kubernetes schema) with every problem reported at once.

A repository is untrusted: nothing outside the snapshot is read (``safety``), and tools run in
scrubbed, time- and memory-limited subprocesses. ``referenced_paths`` tells the git-watcher and
the render cache which paths a render depends on. Settings are documented in ``settings``.
"""

from orchestrator.rendering.api import RenderRequest, render, render_many
from orchestrator.rendering.model import Manifest, RenderLimits, RenderResult, RenderTools
from orchestrator.rendering.refs import referenced_paths

__all__ = ["Manifest", "RenderLimits", "RenderRequest", "RenderResult", "RenderTools",
           "referenced_paths", "render", "render_many"]
