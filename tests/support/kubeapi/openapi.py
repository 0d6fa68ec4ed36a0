"""The smallest OpenAPI v3 documents ``kubectl apply`` needs.

``kubectl`` (1.27+) decides between server-side field validation and its own client-side schema
check by looking, in ``/openapi/v3/<group-version>``, for a PATCH operation tagged with the
object's ``x-kubernetes-group-version-kind`` that takes a ``fieldValidation`` query parameter
(cli-runtime ``queryParamVerifierV3``). We publish exactly that: paths and parameters, no
schemas. The server accepts ``fieldValidation`` and does not validate fields (see README).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from .catalog import ResourceType

JSON = dict[str, Any]

_PARAMS = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
           for n in ("dryRun", "fieldManager", "fieldValidation", "force")]


def _prefix(gv: str) -> str:
    return f"api/{gv}" if "/" not in gv else f"apis/{gv}"


def openapi_v3_root(types: Iterable[ResourceType]) -> JSON:
    gvs = sorted({t.group_version for t in types})
    return {"paths": {_prefix(gv): {"serverRelativeURL": f"/openapi/v3/{_prefix(gv)}?hash="
                                    + hashlib.sha256(gv.encode()).hexdigest()[:16].upper()}
                      for gv in gvs}}


def openapi_v3_group(path: str, types: Iterable[ResourceType]) -> JSON:
    gv = path.removeprefix("api/").removeprefix("apis/")
    paths: JSON = {}
    for t in types:
        if t.group_version != gv:
            continue
        scope = "/namespaces/{namespace}" if t.namespaced else ""
        gvk = {"group": t.group, "version": t.version, "kind": t.kind}
        op: JSON = {"operationId": f"patch{t.kind}", "parameters": _PARAMS,
                    "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk,
                    "responses": {"200": {"description": "OK"}}}
        paths[f"/{_prefix(gv)}{scope}/{t.plural}/{{name}}"] = {"patch": op}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": paths, "components": {"schemas": {}}}
