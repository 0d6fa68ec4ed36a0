"""The fake API server's object store: CRUD, coarse server-side apply, namespaces and CRDs.

Everything here is synchronous and in memory; ``server.py`` turns HTTP into these calls and
``ApiError`` into ``Status`` responses shaped like the real API server's.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from .catalog import BUILTIN, ResourceType, types_from_crd
from .fields import (
    Path,
    conflicts,
    deep_merge,
    delete_path,
    dotted,
    from_fields_v1,
    get_path,
    json_copy,
    leaf_paths,
    to_fields_v1,
)
from .selectors import SelectorError, field_matcher, label_matcher

JSON = dict[str, Any]
Owners = dict[tuple[str, str], set[Path]]   # (manager, operation) -> owned field paths

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CRD_GROUP = "apiextensions.k8s.io"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class ApiError(Exception):
    """A failure the API server reports as a ``Status`` object."""

    REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
               405: "MethodNotAllowed", 409: "Conflict", 410: "Expired",
               415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
               500: "InternalError",
               503: "ServiceUnavailable", 504: "Timeout"}

    def __init__(self, code: int, message: str, *, reason: str | None = None,
                 details: JSON | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or self.REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> JSON:
        doc: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            doc["details"] = self.details
        return doc


def not_found(rt: ResourceType, name: str) -> ApiError:
    details: JSON = {"name": name, "kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    return ApiError(404, f'{rt.group_resource} "{name}" not found', details=details)


def no_resource() -> ApiError:
    return ApiError(404, "the server could not find the requested resource",
                    details={"causes": [{"reason": "UnexpectedServerResponse",
                                         "message": "404 page not found"}]})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owners(obj: JSON) -> Owners:
    out: Owners = {}
    for entry in obj.get("metadata", {}).get("managedFields") or ():
        key = (entry.get("manager", ""), entry.get("operation", "Update"))
        out[key] = from_fields_v1(entry.get("fieldsV1") or {})
    return out


def _write_owners(obj: JSON, owners: Owners, before: Owners, api_version: str) -> None:
    old = {(e.get("manager"), e.get("operation")): e
           for e in obj.get("metadata", {}).get("managedFields") or ()}
    entries = []
    for (manager, op), paths in owners.items():
        if not paths:
            continue
        prev = old.get((manager, op))
        same = prev is not None and before.get((manager, op)) == paths
        entries.append({"manager": manager, "operation": op, "apiVersion": api_version,
                        "time": prev["time"] if same and prev else _now(),
                        "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths)})
    obj.setdefault("metadata", {})["managedFields"] = entries


def _record_update(owners: Owners, manager: str, old: JSON, new: JSON) -> None:
    """A non-apply write takes every field it changed, as the real server does (no conflicts)."""
    present = leaf_paths(new)
    changed = {p for p in present if get_path(old, p) != get_path(new, p)}
    for key in owners:
        owners[key] = (owners[key] - changed) & present
    owners[(manager, "Update")] = (owners.get((manager, "Update"), set()) | changed) & present


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return json_copy(patch)
    out = json_copy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _spec_of(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    def __init__(self) -> None:
        self.types: dict[tuple[str, str], dict[str, ResourceType]] = {}
        self.objects: dict[tuple[str, str], dict[tuple[str, str], JSON]] = {}
        self.revision = 0
        self.on_crd: Callable[[str], None] = lambda name: None
        for rt in BUILTIN:
            self._register(rt)
        ns_type = self.resource("", "v1", "namespaces")
        for name in INITIAL_NAMESPACES:
            self.apply(ns_type, "", name, {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": name}}, "kube-apiserver")

    # -- types ---------------------------------------------------------------------------

    def _register(self, rt: ResourceType) -> None:
        self.types.setdefault((rt.group, rt.version), {})[rt.plural] = rt

    def all_types(self) -> Iterable[ResourceType]:
        for by_plural in self.types.values():
            yield from by_plural.values()

    def resource(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.types.get((group, version), {}).get(plural)
        if rt is None:
            raise no_resource()
        return rt

    def kind(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for rt in self.types.get((group, version), {}).values():
            if rt.kind == kind:
                return rt
        raise ApiError(404, f'no matches for kind "{kind}" in version "{api_version}"')

    def establish(self, crd_name: str) -> None:
        """Mark a CRD Established and serve its kinds (discovery shows them from now on)."""
        rt = self.resource(_CRD_GROUP, "v1", "customresourcedefinitions")
        crd = self.objects.get((_CRD_GROUP, rt.plural), {}).get(("", crd_name))
        if crd is None:
            raise not_found(rt, crd_name)
        for t in types_from_crd(crd):
            self._register(t)
        self.set_status(rt, "", crd_name, self._crd_status(crd, established=True))

    @staticmethod
    def _crd_status(crd: JSON, *, established: bool) -> JSON:
        names = (crd.get("spec") or {}).get("names") or {}
        conds = [{"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                  "message": "no conflicts found", "lastTransitionTime": _now()},
                 {"type": "Established", "status": "True" if established else "False",
                  "reason": "InitialNamesAccepted" if established else "Installing",
                  "message": "the initial names have been accepted" if established
                  else "the resource is being installed", "lastTransitionTime": _now()}]
        versions = [v["name"] for v in (crd.get("spec") or {}).get("versions") or ()]
        return {"acceptedNames": names, "conditions": conds, "storedVersions": versions[:1]}

    # -- reads ---------------------------------------------------------------------------

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], JSON]:
        return self.objects.setdefault((rt.group, rt.plural), {})

    def _out(self, rt: ResourceType, obj: JSON) -> JSON:
        out: JSON = json_copy(obj)
        out["apiVersion"] = rt.group_version
        return out

    def _key(self, rt: ResourceType, namespace: str, name: str) -> tuple[str, str]:
        return (namespace if rt.namespaced else "", name)

    def get(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        obj = self._bucket(rt).get(self._key(rt, namespace, name))
        if obj is None:
            raise not_found(rt, name)
        return self._out(rt, obj)

    def select(self, rt: ResourceType, namespace: str | None, label_selector: str = "",
             field_selector: str = "") -> list[JSON]:
        try:
            labels_ok = label_matcher(label_selector)
            fields_ok = field_matcher(field_selector)
        except SelectorError as exc:
            raise ApiError(400, str(exc)) from None
        items = []
        for (ns, _), obj in sorted(self._bucket(rt).items()):
            meta = obj["metadata"]
            if namespace and rt.namespaced and ns != namespace:
                continue
            if labels_ok(meta.get("labels") or {}) and fields_ok(meta):
                item = self._out(rt, obj)
                del item["apiVersion"], item["kind"]   # list items carry neither, as for real
                items.append(item)
        return items

    # -- writes --------------------------------------------------------------------------

    def _require_namespace(self, rt: ResourceType, namespace: str) -> None:
        if not rt.namespaced:
            return
        if not namespace:
            raise ApiError(400, "the server could not find the requested resource: "
                                "namespace is required for a namespaced resource")
        if ("", namespace) not in self.objects.get(("", "namespaces"), {}):
            raise ApiError(404, f'namespaces "{namespace}" not found',
                           details={"name": namespace, "kind": "namespaces"})

    def _check_body(self, rt: ResourceType, namespace: str, name: str, body: Any) -> JSON:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body is not an object")
        if body.get("apiVersion") != rt.group_version or body.get("kind") != rt.kind:
            raise ApiError(400, f"the API version in the data ({body.get('apiVersion')}) and kind "
                                f"({body.get('kind')}) do not match the request "
                                f"({rt.group_version}, {rt.kind})")
        meta = body.get("metadata") or {}
        if meta.get("name") and name and meta["name"] != name:
            raise ApiError(400, f"the name of the object ({meta['name']}) does not match the "
                                f"name on the URL ({name})")
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise ApiError(400, "the namespace of the provided object does not match the "
                                "namespace sent on the request")
        copied: JSON = json_copy(body)
        return copied

    def _validate(self, rt: ResourceType, obj: JSON) -> None:
        name = obj["metadata"].get("name", "")
        pattern, limit, what = ((_LABEL, 63, "RFC 1123 label") if rt.kind == "Namespace"
                                else (_SUBDOMAIN, 253, "RFC 1123 subdomain"))
        if not name:
            raise ApiError(422, f"{rt.kind} \"\" is invalid: metadata.name: Required value: "
                                "name or generateName is required",
                           details={"kind": rt.kind, "causes": [
                               {"reason": "FieldValueRequired", "field": "metadata.name"}]})
        if len(name) > limit or not pattern.match(name):
            msg = (f'{rt.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": '
                   f"a lowercase {what} must consist of lower case alphanumeric characters, "
                   "'-' or '.', and must start and end with an alphanumeric character")
            raise ApiError(422, msg, details={"name": name, "kind": rt.kind, "causes": [
                {"reason": "FieldValueInvalid", "field": "metadata.name"}]})
        if rt.kind == "CustomResourceDefinition":
            spec = obj.get("spec") or {}
            names = spec.get("names") or {}
            want = f"{names.get('plural')}.{spec.get('group')}"
            if name != want or not names.get("kind") or not spec.get("versions"):
                raise ApiError(422, f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is '
                                    f'invalid: metadata.name: Invalid value: "{name}": must be '
                                    "spec.names.plural+\".\"+spec.group, with spec.names.kind "
                                    "and spec.versions set")

    @staticmethod
    def _normalize(rt: ResourceType, obj: JSON) -> None:
        if rt.kind == "Secret" and "stringData" in obj:
            data = obj.setdefault("data", {})
            for key, value in (obj.pop("stringData") or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
        if rt.kind == "Namespace":
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})
        if rt.kind in ("Deployment", "StatefulSet", "ReplicaSet"):
            obj.setdefault("spec", {}).setdefault("replicas", 1)

    def _commit(self, rt: ResourceType, namespace: str, obj: JSON, old: JSON | None,
                dry_run: bool) -> JSON:
        meta = obj["metadata"]
        if rt.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        self._normalize(rt, obj)
        self._validate(rt, obj)
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            if "spec" in obj:
                meta["generation"] = 1
        else:
            for key in ("uid", "creationTimestamp", "generation", "resourceVersion"):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
            if _spec_of(obj) != _spec_of(old):
                meta["generation"] = int(meta.get("generation", 0)) + 1
        if old is None or obj != old:
            meta["resourceVersion"] = str(self.revision + 1)
            if not dry_run:
                self.revision += 1
        if dry_run:
            return self._out(rt, obj)
        self._bucket(rt)[self._key(rt, namespace, meta["name"])] = obj
        if rt.kind == "CustomResourceDefinition" and old is None:
            obj["status"] = self._crd_status(obj, established=False)
            self.on_crd(meta["name"])
            return self._out(rt, self._bucket(rt)[self._key(rt, namespace, meta["name"])])
        return self._out(rt, obj)

    def apply(self, rt: ResourceType, namespace: str, name: str, body: Any, manager: str,
              *, force: bool = False, dry_run: bool = False) -> tuple[JSON, bool]:
        """Server-side apply; returns (object, created)."""
        applied = self._check_body(rt, namespace, name, body)
        applied.pop("status", None)
        live = self._bucket(rt).get(self._key(rt, namespace, name))
        if live is None:
            self._require_namespace(rt, namespace)
            base: JSON = {"apiVersion": rt.group_version, "kind": rt.kind,
                          "metadata": {"name": name}}
        else:
            base = json_copy(live)
        owners = _owners(base)
        before = {key: set(paths) for key, paths in owners.items()}
        mine_old = owners.pop((manager, "Apply"), set())
        mine_new = leaf_paths(applied)
        others: dict[str, set[Path]] = {}
        for (m, _), paths in owners.items():
            others.setdefault(m, set()).update(paths)
        found = list(conflicts(base, applied, mine_new, others))
        if found and not force:
            raise self._conflict(found, base, before, rt)
        for m, path in found:
            for key in owners:
                if key[0] == m:
                    owners[key].discard(path)
        still_owned = set().union(*owners.values()) if owners else set()
        for path in mine_old - mine_new - still_owned:
            delete_path(base, path)
        deep_merge(base, applied)
        owners[(manager, "Apply")] = mine_new
        _write_owners(base, owners, before, rt.group_version)
        return self._commit(rt, namespace, base, live, dry_run), live is None

    @staticmethod
    def _conflict(found: list[tuple[str, Path]], live: JSON, owners: Owners,
                  rt: ResourceType) -> ApiError:
        versions = {e.get("manager"): e.get("apiVersion", rt.group_version)
                    for e in live.get("metadata", {}).get("managedFields") or ()}
        causes = [{"reason": "FieldManagerConflict",
                   "message": f'conflict with "{m}" using {versions.get(m, rt.group_version)}',
                   "field": dotted(p)} for m, p in found]
        n = len(found)
        if n == 1:
            text = f"Apply failed with 1 conflict: {causes[0]['message']}: {causes[0]['field']}"
        else:
            lines = "\n".join(f"- {c['message']}: {c['field']}" for c in causes)
            text = f"Apply failed with {n} conflicts:\n{lines}"
        return ApiError(409, text, details={"name": live["metadata"]["name"],
                                            "kind": rt.plural, "causes": causes})

    def create(self, rt: ResourceType, namespace: str, body: Any, manager: str,
               *, dry_run: bool = False) -> JSON:
        obj = self._check_body(rt, namespace, "", body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        self._require_namespace(rt, namespace)
        name = meta.get("name", "")
        if name and self._key(rt, namespace, name) in self._bucket(rt):
            raise ApiError(409, f'{rt.group_resource} "{name}" already exists',
                           reason="AlreadyExists", details={"name": name, "kind": rt.plural})
        if rt.status_subresource:
            obj.pop("status", None)
        meta.pop("managedFields", None)
        owners: Owners = {}
        _record_update(owners, manager, {}, obj)
        _write_owners(obj, owners, {}, rt.group_version)
        return self._commit(rt, namespace, obj, None, dry_run)

    def update(self, rt: ResourceType, namespace: str, name: str, body: Any, manager: str,
               *, patch: bool, dry_run: bool = False) -> JSON:
        """PUT (``patch=False``) or a merge patch (``patch=True``) on an existing object."""
        live = self._bucket(rt).get(self._key(rt, namespace, name))
        if live is None:
            raise not_found(rt, name)
        if patch:
            if not isinstance(body, dict):
                raise ApiError(400, "the patch is not a JSON object")
            new = merge_patch(live, body)
        else:
            new = self._check_body(rt, namespace, name, body)
            want = (new.get("metadata") or {}).get("resourceVersion")
            if want and want != live["metadata"].get("resourceVersion"):
                raise ApiError(409, f'Operation cannot be fulfilled on {rt.group_resource} '
                                    f'"{name}": the object has been modified; please apply your '
                                    "changes to the latest version and try again",
                               details={"name": name, "kind": rt.plural})
        if rt.status_subresource:
            new["status"] = json_copy(live.get("status")) if "status" in live else None
            if new["status"] is None:
                del new["status"]
        new["apiVersion"], new["kind"] = live["apiVersion"], live["kind"]
        owners = _owners(live)
        before = {key: set(paths) for key, paths in owners.items()}
        _record_update(owners, manager, live, new)
        new.setdefault("metadata", {})["managedFields"] = json_copy(
            live["metadata"].get("managedFields") or [])
        _write_owners(new, owners, before, rt.group_version)
        return self._commit(rt, namespace, new, live, dry_run)

    def set_status(self, rt: ResourceType, namespace: str, name: str, status: JSON) -> JSON:
        key = self._key(rt, namespace, name)
        live = self._bucket(rt).get(key)
        if live is None:
            raise not_found(rt, name)
        if live.get("status") != status:
            live["status"] = json_copy(status)
            self.revision += 1
            live["metadata"]["resourceVersion"] = str(self.revision)
        return self._out(rt, live)

    def delete(self, rt: ResourceType, namespace: str, name: str, *,
               propagation: str = "Background", dry_run: bool = False) -> JSON:
        """Delete at once (no finalizers, no Terminating phase) and cascade to dependents."""
        key = self._key(rt, namespace, name)
        live = self._bucket(rt).get(key)
        if live is None:
            raise not_found(rt, name)
        out = self._out(rt, live)
        if dry_run:
            return out
        del self._bucket(rt)[key]
        self.revision += 1
        if rt.kind == "Namespace":
            for (_, plural), bucket in self.objects.items():
                for k in [k for k in bucket if k[0] == name and plural != "namespaces"]:
                    del bucket[k]
        if rt.kind == "CustomResourceDefinition":
            for t in types_from_crd(live):
                self.types.get((t.group, t.version), {}).pop(t.plural, None)
                self.objects.pop((t.group, t.plural), None)
        if propagation != "Orphan":
            self._collect_garbage(live["metadata"]["uid"])
        return out

    def _collect_garbage(self, owner_uid: str) -> None:
        for bucket in list(self.objects.values()):
            for key, obj in list(bucket.items()):
                refs = obj["metadata"].get("ownerReferences") or ()
                if any(r.get("uid") == owner_uid for r in refs) and key in bucket:
                    del bucket[key]
                    self.revision += 1
                    self._collect_garbage(obj["metadata"]["uid"])
