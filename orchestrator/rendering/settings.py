"""The ``render:`` block of an environment in conveyor.yaml, checked and made typed.

Key names follow Argo CD's Application ``source`` where one exists, so a team moving from Argo
CD keeps its vocabulary::

    render:
      type: kustomize            # plain | kustomize | helm | jsonnet | jinja; detected if absent
      include: "*.yaml"          # plain/jinja: glob or list of globs, relative to the env path
      exclude: ["test/**"]       #   (Argo: source.directory.include/exclude); {a,b} and ** work
      recurse: true              # plain/jinja: walk sub-directories (default true)
      helm:                      # Argo: source.helm
        releaseName: web         # default: the last segment of the env path
        namespace: web           # .Release.Namespace (default "default")
        valueFiles: [values-prod.yaml]     # relative to the chart; "valuesFiles" also accepted
        values: {replicas: 3}    # a mapping (Argo's valuesObject) or a YAML string (Argo's values)
        valuesObject: {...}      # merged after ``values``
        skipCrds: false          # or includeCRDs: true (default: CRDs included, as Argo does)
        skipTests: false         # drop helm.sh/hook: test* objects
        kubeVersion: "1.30"      # .Capabilities.KubeVersion
        apiVersions: [monitoring.coreos.com/v1]
      jsonnet:                   # Argo: source.directory.jsonnet
        main: main.jsonnet       # default: main.jsonnet if present, else every *.jsonnet file
        extVars: {env: prod}     # or Argo's list form [{name, value, code: bool}]
        tlas: {replicas: 3}
        libs: [vendor, lib]      # library search paths, repo-relative (Argo: libs)
      jinja:
        values: {image: web:1.2} # the template context (also under ``values``)
      validate:
        schema: true             # check every object against the Kubernetes OpenAPI schema
        kubernetesVersion: "1.30"
        strict: false            # refuse unknown fields
        ignoreMissingSchemas: true   # CRD-defined kinds have no bundled schema

Unknown keys are refused: a typo such as ``exlude`` would otherwise deploy what it meant to hide.

Which program renders and how far a render reaches are the operator's (``RenderTools``:
``--kustomize-binary``, ``--helm-binary``, ``--allow-remote-bases HOSTS``), never the
repository's: ``kustomize.binary``, ``kustomize.allowRemoteBases`` and ``helm.binary`` in
conveyor.yaml are refused naming the flag to use instead (``OPERATOR_ONLY``).

``recurse`` defaults to true, unlike Argo CD's ``directory.recurse: false``. Deliberately: the
default was true before Argo parity was sought, and flipping it would make every existing
environment with manifests in sub-directories silently drop them - and the applier prune them
from the cluster. The opposite surprise is loud instead: an Argo CD layout whose sub-directories
hold other apps renders their objects too, which shows up in ``conveyor render`` and as
duplicate-object errors, and is fixed by writing Argo's own ``recurse: false``. Hidden
directories are never walked, and YAML/JSON files that hold no Kubernetes object (a
``values.yaml``, a kustomize configurations file) are skipped as Argo CD skips them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from orchestrator.errors import PermanentError

RENDERERS = ("plain", "kustomize", "helm", "jsonnet", "jinja")


# key -> (why a committer may not set it, the operator's flag for it)
OPERATOR_ONLY: Mapping[tuple[str, str], tuple[str, str]] = MappingProxyType({
    ("kustomize", "binary"): ("chooses a program to run on the host", "--kustomize-binary"),
    ("kustomize", "allowRemoteBases"): ("opens the render's network to remote hosts",
                                        "--allow-remote-bases HOSTS"),
    ("helm", "binary"): ("chooses a program to run on the host", "--helm-binary"),
})


class SettingsError(PermanentError):
    """A refused ``render:`` setting; ``path`` is the key under ``render`` when known."""

    def __init__(self, message: str, path: tuple[str, ...] = ()) -> None:
        super().__init__(f"render settings: {message}", reason="InvalidRenderSettings")
        self.path = path


def settings_error(message: str) -> PermanentError:
    return SettingsError(message)


def _operator_only(top: Mapping[str, Any]) -> None:
    for (block, key), (why, flag) in OPERATOR_ONLY.items():
        raw = top.get(block)
        if isinstance(raw, Mapping) and key in raw:
            raise SettingsError(f"{block}.{key} {why}: that is operator configuration "
                                f"(conveyor {flag}), never conveyor.yaml", (block, key))


@dataclass(frozen=True, slots=True)
class HelmSettings:
    release_name: str | None = None
    namespace: str | None = None
    value_files: tuple[str, ...] = ()
    values: tuple[Mapping[str, Any], ...] = ()
    include_crds: bool = True
    skip_tests: bool = False
    kube_version: str | None = None
    api_versions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JsonnetSettings:
    main: str | None = None
    ext_vars: Mapping[str, str] = field(default_factory=dict)
    ext_codes: Mapping[str, str] = field(default_factory=dict)
    tla_vars: Mapping[str, str] = field(default_factory=dict)
    tla_codes: Mapping[str, str] = field(default_factory=dict)
    libs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ValidateSettings:
    schema: bool = False
    kubernetes_version: str | None = None
    strict: bool = False
    ignore_missing_schemas: bool = True


@dataclass(frozen=True, slots=True)
class RenderSettings:
    type: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    recurse: bool = True
    helm: HelmSettings = HelmSettings()
    jsonnet: JsonnetSettings = JsonnetSettings()
    jinja_values: Mapping[str, Any] = field(default_factory=dict)
    validate: ValidateSettings = ValidateSettings()


def _block(raw: Any, name: str, allowed: set[str]) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise settings_error(f"{name} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise settings_error(f"{name}: unknown key(s) {unknown} (allowed: {sorted(allowed)})")
    return raw


def _bool(raw: Any, name: str, default: bool) -> bool:
    if raw is None:
        return default
    if not isinstance(raw, bool):
        raise settings_error(f"{name} must be true or false")
    return raw


def _str(raw: Any, name: str) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise settings_error(f"{name} must be a string")
    return str(raw)


def _strings(raw: Any, name: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise settings_error(f"{name} must be a string or a list of strings")
    return tuple(raw)


def _vars(raw: Any, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """Argo's ``[{name, value, code}]`` or a plain mapping -> (string vars, code vars).

    In the mapping form a string is a string variable and any other value (number, list,
    mapping, bool) is passed as jsonnet code of its JSON form.
    """
    strings: dict[str, str] = {}
    codes: dict[str, str] = {}
    if raw is None:
        return strings, codes
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            if isinstance(value, str):
                strings[str(key)] = value
            else:
                codes[str(key)] = json.dumps(value)
        return strings, codes
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            entry = _block(item, f"{name}[{i}]", {"name", "value", "code"})
            key = _str(entry.get("name"), f"{name}[{i}].name")
            if not key:
                raise settings_error(f"{name}[{i}] needs a name")
            value = _str(entry.get("value"), f"{name}[{i}].value") or ""
            if _bool(entry.get("code"), f"{name}[{i}].code", False):
                codes[key] = value
            else:
                strings[key] = value
        return strings, codes
    raise settings_error(f"{name} must be a mapping or a list of {{name, value, code}}")


def _values(raw: Any, name: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise settings_error(f"{name} is not valid YAML: {exc}") from None
        if raw is None:
            return {}
    if not isinstance(raw, Mapping):
        raise settings_error(f"{name} must be a mapping")
    return raw


def parse_settings(raw: Mapping[str, Any] | None) -> RenderSettings:
    """Check the ``render:`` block; raises PermanentError naming the bad key."""
    top = _block(raw, "render", {"type", "include", "exclude", "recurse", "kustomize", "helm",
                                 "jsonnet", "jinja", "validate"})
    _operator_only(top)
    kind = _str(top.get("type"), "type")
    if kind is not None and kind not in RENDERERS:
        raise settings_error(f"type must be one of {', '.join(RENDERERS)}, got {kind!r}")

    _block(top.get("kustomize"), "kustomize", set())  # nothing a committer may set

    h = _block(top.get("helm"), "helm", {"releaseName", "namespace", "valueFiles", "valuesFiles",
                                         "values", "valuesObject", "includeCRDs", "skipCrds",
                                         "skipTests", "kubeVersion", "apiVersions"})
    include_crds = _bool(h.get("includeCRDs"), "helm.includeCRDs", True)
    if h.get("skipCrds") is not None:
        include_crds = not _bool(h.get("skipCrds"), "helm.skipCrds", False)
    helm = HelmSettings(
        release_name=_str(h.get("releaseName"), "helm.releaseName"),
        namespace=_str(h.get("namespace"), "helm.namespace"),
        value_files=_strings(h.get("valueFiles"), "helm.valueFiles")
        + _strings(h.get("valuesFiles"), "helm.valuesFiles"),
        values=tuple(v for v in (_values(h.get("values"), "helm.values"),
                                 _values(h.get("valuesObject"), "helm.valuesObject")) if v),
        include_crds=include_crds,
        skip_tests=_bool(h.get("skipTests"), "helm.skipTests", False),
        kube_version=_str(h.get("kubeVersion"), "helm.kubeVersion"),
        api_versions=_strings(h.get("apiVersions"), "helm.apiVersions"),
    )

    j = _block(top.get("jsonnet"), "jsonnet", {"main", "extVars", "tlas", "libs"})
    ext_vars, ext_codes = _vars(j.get("extVars"), "jsonnet.extVars")
    tla_vars, tla_codes = _vars(j.get("tlas"), "jsonnet.tlas")
    jsonnet = JsonnetSettings(
        main=_str(j.get("main"), "jsonnet.main"), ext_vars=ext_vars, ext_codes=ext_codes,
        tla_vars=tla_vars, tla_codes=tla_codes, libs=_strings(j.get("libs"), "jsonnet.libs"),
    )

    ji = _block(top.get("jinja"), "jinja", {"values"})

    v = _block(top.get("validate"), "validate", {"schema", "kubernetesVersion", "strict",
                                                 "ignoreMissingSchemas"})
    validate = ValidateSettings(
        schema=_bool(v.get("schema"), "validate.schema", False),
        kubernetes_version=_str(v.get("kubernetesVersion"), "validate.kubernetesVersion"),
        strict=_bool(v.get("strict"), "validate.strict", False),
        ignore_missing_schemas=_bool(v.get("ignoreMissingSchemas"),
                                     "validate.ignoreMissingSchemas", True),
    )
    return RenderSettings(
        type=kind,
        include=_strings(top.get("include"), "include"),
        exclude=_strings(top.get("exclude"), "exclude"),
        recurse=_bool(top.get("recurse"), "recurse", True),
        helm=helm, jsonnet=jsonnet,
        jinja_values=_values(ji.get("values"), "jinja.values"),
        validate=validate,
    )
