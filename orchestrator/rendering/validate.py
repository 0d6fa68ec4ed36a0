"""Checks every rendered object passes before anything can be applied.

- structure: ``apiVersion``, ``kind`` and ``metadata.name`` are non-empty strings
  (``generateName`` alone is refused with its own reason: Conveyor applies by name);
- identity: no two objects share (group, kind, namespace, name); the error names both sources;
- schema (opt-in per environment): the object matches the Kubernetes OpenAPI schema of
  ``kubernetesVersion`` (via ``kubernetes-validate``). Kinds without a bundled schema (CRDs)
  are skipped unless ``ignoreMissingSchemas: false``.

All problems are returned together, each as ``file:line:column: reason`` when the object came
from a file we parsed, or ``<tool source>: <object>: reason`` for tool output.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Sequence
from typing import Any

from orchestrator.domain.bundle import ObjectKey, object_key
from orchestrator.errors import PermanentError
from orchestrator.rendering.parse import Located
from orchestrator.rendering.settings import ValidateSettings

DEFAULT_KUBERNETES_VERSION = "1.30"


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _label(obj: dict[str, Any]) -> str:
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else "?"
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{kind}/{name if isinstance(name, str) else '?'}"


def structure_errors(item: Located) -> list[str]:
    obj = item.manifest.obj
    errors: list[str] = []
    tool = item.doc is None  # tool output: say which object, there is no line to point at
    prefix = f"{_label(obj)}: " if tool else ""
    for key in ("apiVersion", "kind"):
        value = obj.get(key)
        if key not in obj:
            errors.append(f"{item.where()}: {prefix}missing {key}")
        elif not isinstance(value, str) or not value:
            errors.append(f"{item.where(key)}: {prefix}{key} must be a non-empty string")
    meta = obj.get("metadata")
    if meta is None:
        errors.append(f"{item.where()}: {prefix}missing metadata.name")
    elif not isinstance(meta, dict):
        errors.append(f"{item.where('metadata')}: {prefix}metadata must be a mapping")
    else:
        name = meta.get("name")
        if name is None and meta.get("generateName"):
            errors.append(f"{item.where('metadata', 'generateName')}: {prefix}"
                          "metadata.generateName is not supported: objects are applied and "
                          "pruned by name, and a generated name would create a new object on "
                          "every sync (Argo CD allows it only for hooks); set metadata.name")
        elif name is None:
            errors.append(f"{item.where('metadata')}: {prefix}missing metadata.name")
        elif not isinstance(name, str) or not name:
            errors.append(f"{item.where('metadata', 'name')}: {prefix}metadata.name must be a "
                          "non-empty string")
        elif name in (".", "..") or "/" in name or "%" in name:
            # a path segment of the object's API URL: "." or "a/b" would address another
            errors.append(f"{item.where('metadata', 'name')}: {prefix}metadata.name {name!r} "
                          "is not a valid object name ('.', '..', '/' and '%' are refused)")
        namespace = meta.get("namespace")
        if namespace is not None and not isinstance(namespace, str):
            errors.append(f"{item.where('metadata', 'namespace')}: {prefix}metadata.namespace "
                          "must be a string")
        elif isinstance(namespace, str) and namespace and not _DNS_LABEL.match(namespace):
            errors.append(f"{item.where('metadata', 'namespace')}: {prefix}metadata.namespace "
                          f"{namespace!r} is not a namespace name (lower-case letters, digits "
                          "and '-', at most 63)")
    return errors


def duplicate_errors(items: Sequence[Located]) -> list[str]:
    seen: dict[ObjectKey, Located] = {}
    errors: list[str] = []
    for item in items:
        key = object_key(item.manifest.obj)
        first = seen.get(key)
        if first is None:
            seen[key] = item
            continue
        errors.append(f"{item.where()}: duplicate object {key}: defined in "
                      f"{first.manifest.source} and {item.manifest.source}")
    return errors


def _reason(obj: dict[str, Any], exc: Any) -> str:
    """The schema's reason; for a Secret without the offending value, which jsonschema quotes
    and which would be kept forever in ``render.failed``."""
    if obj.get("kind") != "Secret":
        return str(exc.message)
    validator, expected = getattr(exc, "validator", ""), getattr(exc, "validator_value", "")
    return f"the value fails '{validator}: {expected}' (a Secret's value is never shown)"


def schema_errors(items: Sequence[Located], settings: ValidateSettings) -> list[str]:
    # imported on use: loading it costs ~0.2 s, and it is an optional extra
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import VersionNotSupportedError
    except ImportError:
        raise PermanentError("render settings: validate.schema needs the kubernetes-validate "
                             "package: pip install 'conveyor[validate]'",
                             reason="ToolMissing") from None

    version = settings.kubernetes_version or DEFAULT_KUBERNETES_VERSION
    errors: list[str] = []
    for item in items:
        obj = item.manifest.obj
        try:
            kubernetes_validate.validate(obj, version, strict=settings.strict)
        except kubernetes_validate.SchemaNotFoundError as exc:
            if not settings.ignore_missing_schemas:
                errors.append(f"{item.where()}: {_label(obj)}: {exc.message}")
        except VersionNotSupportedError as exc:
            return [f"validate.kubernetesVersion: {exc.message}"]
        except kubernetes_validate.ValidationError as exc:
            path = [p for p in exc.absolute_path]
            field = ".".join(str(p) for p in path) or "(object)"
            errors.append(f"{item.where(*path)}: {_label(obj)}: {field}: {_reason(obj, exc)} "
                          f"(Kubernetes {exc.version} schema)")
    return errors


SECRET_FIELDS = ("data", "stringData")
REDACTED = "<redacted>"


def is_secret(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("kind") == "Secret" and \
        str(obj.get("apiVersion", "v1")) == "v1"


def secret_values(items: Sequence[Located]) -> list[str]:
    """Every string under a Secret's ``data``/``stringData`` (and each ``data`` value
    decoded), longest first: what no error may quote."""
    found: set[str] = set()
    for item in items:
        obj = item.manifest.obj
        if not is_secret(obj):
            continue
        stack: list[Any] = [obj.get(f) for f in SECRET_FIELDS]
        while stack:
            value = stack.pop()
            if isinstance(value, dict):
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
            elif isinstance(value, str | int | float) and not isinstance(value, bool):
                text = str(value)
                if len(text) >= 3:
                    found.add(text)
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    decoded = base64.b64decode(text, validate=True).decode()
                    if len(decoded) >= 3:
                        found.add(decoded)
    return sorted(found, key=len, reverse=True)


def mask(errors: Sequence[str], items: Sequence[Located]) -> list[str]:
    """``errors`` with every Secret value of ``items`` replaced by ``<redacted>``."""
    values = secret_values(items)
    if not values:
        return list(errors)
    out = []
    for error in errors:
        for value in values:
            error = error.replace(value, REDACTED)
        out.append(error)
    return out


def validate(items: Sequence[Located], settings: ValidateSettings, max_objects: int
             ) -> list[str]:
    """Every problem of the rendered objects; an empty list means they may be applied."""
    if len(items) > max_objects:
        return [f"render produced {len(items)} objects, more than the limit of {max_objects}"]
    errors: list[str] = []
    valid: list[Located] = []
    for item in items:
        problems = structure_errors(item)
        errors.extend(problems)
        if not problems:
            valid.append(item)
    errors.extend(duplicate_errors(valid))
    if settings.schema and valid:
        errors.extend(schema_errors(valid, settings))
    return mask(errors, items)
