"""Where Lua health scripts come from, in Argo CD's own layouts, so existing files work as-is.

- A directory tree ``<group>/<Kind>/health.lua`` (``<Kind>/health.lua`` for the core group), the
  layout of Argo CD's ``resource_customizations``. A path component ``_`` or starting with
  ``_.`` is a wildcard, as Argo CD's ``_.crossplane.io/_``: ``*.crossplane.io/*``. Files named
  ``health_test.yaml`` beside a script are its tests (``conveyor health test``).
- An ``argocd-cm`` ConfigMap manifest: ``data`` keys
  ``resource.customizations.health.<group>_<Kind>`` (``<Kind>`` alone, or ``_<Kind>``, for the
  core group; the first ``_`` separates group from kind, as neither may contain one) and the
  older ``resource.customizations`` key holding a YAML map of ``<group>/<Kind>`` (globs such as
  ``*.crossplane.io/*`` allowed) to ``{health.lua: ...}``. Other keys (``ignoreDifferences``,
  ``actions``, ``useOpenLibs``...) are accepted and ignored.

Lookup follows Argo CD's ``GetHealthScript``: within one source the exact ``group/Kind`` first,
then the first glob that matches (declaration order; ``*`` matches any characters, ``/``
included, as Argo's ``glob.Match``); sources are asked in priority order.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.domain.yamlpos import YamlSyntaxError, load_all
from orchestrator.health_rules.lua import LuaScript

SCRIPT_FILE = "health.lua"
TEST_FILE = "health_test.yaml"
HEALTH_KEY = "resource.customizations.health."
LEGACY_KEY = "resource.customizations"
MAX_SCRIPT_BYTES = 256 * 1024


class HealthRuleError(ValueError):
    """A rule file cannot be read; the message names the file (and line) and the reason."""


@dataclass(frozen=True, slots=True)
class LuaRule:
    pattern: str
    """``group/Kind``, ``Kind`` (core group), or a glob over those."""
    script: LuaScript

    @property
    def is_glob(self) -> bool:
        return any(c in self.pattern for c in "*?[")


@dataclass(frozen=True, slots=True)
class LuaRuleSet:
    """The scripts of one source, in declaration order."""

    origin: str
    rules: tuple[LuaRule, ...] = ()

    def find(self, group: str, kind: str) -> LuaRule | None:
        key = override_key(group, kind)
        for rule in self.rules:
            if not rule.is_glob and rule.pattern == key:
                return rule
        for rule in self.rules:
            if rule.is_glob and fnmatch.fnmatchcase(key, rule.pattern):
                return rule
        return None


def override_key(group: str, kind: str) -> str:
    """Argo CD's ``GetConfigMapKey``: ``group/Kind``, or ``Kind`` for the core group."""
    return f"{group}/{kind}" if group else kind


def find(sources: Iterable[LuaRuleSet], group: str, kind: str) -> LuaRule | None:
    """The first source's rule for ``group``/``kind``."""
    for source in sources:
        rule = source.find(group, kind)
        if rule is not None:
            return rule
    return None


# -- directory trees ---------------------------------------------------------------------------

def _pattern_of(parts: tuple[str, ...]) -> str:
    """``("_.crossplane.io", "_")`` -> ``*.crossplane.io/*``."""
    return "/".join("*" + part[1:] if part == "_" or part.startswith("_.") else part
                    for part in parts)


def rules_from_files(files: Mapping[str, str], origin: str) -> LuaRuleSet:
    """Scripts from ``{relative path: text}`` of a ``<group>/<Kind>/health.lua`` tree."""
    rules: list[LuaRule] = []
    for relative in sorted(files):
        parts = tuple(Path(relative).parts)
        if not parts or parts[-1] != SCRIPT_FILE:
            continue
        where = parts[:-1]
        if len(where) not in (1, 2):
            raise HealthRuleError(f"{origin}/{relative}: expected <group>/<Kind>/{SCRIPT_FILE} "
                                  f"or <Kind>/{SCRIPT_FILE}")
        rules.append(LuaRule(_pattern_of(where), LuaScript(f"{origin}/{relative}",
                                                           files[relative])))
    return LuaRuleSet(origin, tuple(rules))


def read_tree(root: Path, *, names: tuple[str, ...] = (SCRIPT_FILE,)) -> dict[str, str]:
    """Every file called one of ``names`` under ``root``: ``{relative path: text}``.

    Symbolic links are not followed out of ``root`` (a link pointing outside is an error), so
    the tree holds what it shows.
    """
    if not root.is_dir():
        raise HealthRuleError(f"{root}: not a directory")
    real_root = root.resolve()
    found: dict[str, str] = {}
    for directory, _dirs, filenames in os.walk(root):
        for name in filenames:
            if name not in names:
                continue
            path = Path(directory) / name
            if not path.resolve().is_relative_to(real_root):
                raise HealthRuleError(f"{path}: links outside {root}")
            if path.stat().st_size > MAX_SCRIPT_BYTES:
                raise HealthRuleError(f"{path}: larger than {MAX_SCRIPT_BYTES} bytes")
            try:
                found[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise HealthRuleError(f"{path}: {exc}") from None
    return found


def load_directory(root: Path) -> LuaRuleSet:
    return rules_from_files(read_tree(root), str(root))


# -- argocd-cm ---------------------------------------------------------------------------------

def _group_kind(suffix: str) -> str:
    """``cert-manager.io_Certificate`` -> ``cert-manager.io/Certificate``; ``Pod`` -> ``Pod``."""
    group, sep, kind = suffix.partition("_")
    if not sep:
        return suffix
    return f"{group}/{kind}" if group else kind


def _data_of(text: str, file: str) -> tuple[Mapping[str, Any], Any]:
    try:
        documents = [d for d in load_all(text, file) if d.value is not None]
    except YamlSyntaxError as exc:
        raise HealthRuleError(str(exc)) from None
    maps = [d for d in documents if isinstance(d.value, Mapping)
            and d.value.get("kind") == "ConfigMap"]
    named = [d for d in maps if (d.value.get("metadata") or {}).get("name") == "argocd-cm"]
    chosen = named or maps
    if len(chosen) != 1:
        raise HealthRuleError(f"{file}: expected one ConfigMap (argocd-cm), found {len(chosen)}")
    document = chosen[0]
    data = document.value.get("data") or {}
    if not isinstance(data, Mapping):
        raise HealthRuleError(f"{document.where('data')}: data must be a mapping")
    return data, document


def rules_from_config_map(text: str, file: str) -> LuaRuleSet:
    """The health scripts of an ``argocd-cm`` manifest (see the module docstring)."""
    data, document = _data_of(text, file)
    rules: list[LuaRule] = []
    for key, value in data.items():
        key = str(key)
        line = document.where("data", key).line
        if key.startswith(HEALTH_KEY):
            if not isinstance(value, str):
                raise HealthRuleError(f"{file}:{line}: {key} must be a string (a Lua script)")
            pattern = _group_kind(key[len(HEALTH_KEY):])
            rules.append(LuaRule(pattern, LuaScript(f"{file}:{line}:{key}", value)))
        elif key == LEGACY_KEY:
            rules.extend(_legacy(value, f"{file}:{line}"))
    return LuaRuleSet(file, tuple(rules))


def _legacy(value: Any, where: str) -> list[LuaRule]:
    if not isinstance(value, str):
        raise HealthRuleError(f"{where}: {LEGACY_KEY} must be a string holding YAML")
    try:
        overrides = yaml.safe_load(value) or {}
    except yaml.YAMLError as exc:
        raise HealthRuleError(f"{where}: {LEGACY_KEY} is not YAML: {exc}") from None
    if not isinstance(overrides, Mapping):
        raise HealthRuleError(f"{where}: {LEGACY_KEY} must map <group>/<Kind> to settings")
    rules = []
    for pattern, settings in overrides.items():
        script = settings.get("health.lua") if isinstance(settings, Mapping) else None
        if script is None:
            continue
        if not isinstance(script, str):
            raise HealthRuleError(f"{where}: {LEGACY_KEY}: {pattern}: health.lua must be a "
                                  "string")
        rules.append(LuaRule(str(pattern), LuaScript(f"{where}:{pattern}", script)))
    return rules


def load_config_map(path: Path) -> LuaRuleSet:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HealthRuleError(f"{path}: {exc}") from None
    return rules_from_config_map(text, str(path))
