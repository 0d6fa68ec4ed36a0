"""A contract-faithful fake Kubernetes API server for tests and benchmarks.

``FakeKubeAPI`` serves discovery, get/list (label and field selectors), server-side apply,
create, merge patch, replace and delete for the common built-in kinds and for CRDs, shaped
closely enough that the real ``kubectl`` works against it. What it simplifies is listed in
``server.py``/``fields.py`` docstrings and in the README's "what needs a real cluster".

Modules: ``catalog`` (resource types, discovery documents), ``fields`` (coarse managed-field
ownership and the apply merge), ``selectors``, ``store`` (objects and their rules),
``openapi`` (what kubectl looks for), ``server`` (HTTP, auth, hooks).
"""

from .catalog import ResourceType
from .server import FakeKubeAPI, RequestRecord
from .store import ApiError

__all__ = ["ApiError", "FakeKubeAPI", "RequestRecord", "ResourceType"]
