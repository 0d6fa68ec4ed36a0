"""The health engine: user rules first, then the built-in ones, one ``Assessment`` per object.

The order is Argo CD's ``GetResourceHealth``: an absent object is Missing and one being deleted
is Progressing whatever the rules say; then a user rule for the kind (CEL expressions from
conveyor.yaml, then Lua scripts source by source, see ``sources``) overrides the built-in rule;
then ``orchestrator.domain.health.evaluate``. The applier, ``conveyor health`` and
``conveyor health test`` all go through ``HealthEngine.evaluate``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.domain.config import parse_config
from orchestrator.domain.health import (
    MISSING,
    Assessment,
    Health,
    HealthStatus,
    api_group,
    evaluate,
    is_deleting,
    pending_deletion,
)
from orchestrator.errors import ConfigError
from orchestrator.health_rules import cel, sources
from orchestrator.health_rules.lua import LuaEngine, LuaScript
from orchestrator.health_rules.sources import LuaRuleSet


@dataclass(frozen=True, slots=True)
class HealthRules:
    """The user rules in force, in priority order (immutable: swap the whole value)."""

    lua: tuple[LuaRuleSet, ...] = ()
    cel: tuple[cel.CompiledCheck, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.cel) or any(s.rules for s in self.lua)

    def then(self, other: HealthRules) -> HealthRules:
        """These rules first, ``other``'s after them."""
        return HealthRules(lua=self.lua + other.lua, cel=self.cel + other.cel)


class HealthEngine:
    """Evaluates objects against ``rules``; Lua runs on one ``LuaEngine`` made on first need.

    An engine lives for one sync (``with_rules`` makes one per apply). A script that used up
    its time limit is not run again by the same engine: every later object it would assess is
    Unknown at once, so a committed ``while true do end`` costs one second per sync, not one
    per object and poll (assessments run on the applier's event loop).
    """

    def __init__(self, rules: HealthRules | None = None, *, lua: LuaEngine | None = None) -> None:
        self.rules = rules or HealthRules()
        self._lua = lua
        self._slow: dict[str, HealthStatus] = {}

    def with_rules(self, rules: HealthRules) -> HealthEngine:
        """An engine for other rules sharing this one's Lua runtime."""
        return HealthEngine(rules, lua=self._lua_engine() if rules.lua else self._lua)

    def _lua_engine(self) -> LuaEngine:
        if self._lua is None:
            self._lua = LuaEngine()
        return self._lua

    def evaluate(self, obj: Mapping[str, Any] | None) -> Assessment:
        if obj is None:
            return Assessment(MISSING, "built-in")
        if is_deleting(obj):
            return Assessment(pending_deletion(obj), "built-in")
        if self.rules:
            check = cel.find(self.rules.cel, obj)
            if check is not None:
                return Assessment(cel.evaluate(check, obj), f"cel:{check.check.source}")
            group, kind = api_group(obj), str(obj.get("kind") or "")
            rule = sources.find(self.rules.lua, group, kind)
            if rule is not None:
                return Assessment(self._run_lua(rule.script, obj), f"lua:{rule.script.source}")
        return evaluate(obj)

    def _run_lua(self, script: LuaScript, obj: Mapping[str, Any]) -> HealthStatus | None:
        slow = self._slow.get(script.source)
        if slow is not None:
            return slow
        lua = self._lua_engine()
        started = time.monotonic()
        verdict = lua.run(script, obj)
        if time.monotonic() - started >= lua.timeout and verdict is not None \
                and verdict.status is Health.UNKNOWN:
            self._slow[script.source] = HealthStatus(
                Health.UNKNOWN, f"{verdict.message} (not run again in this sync)")
        return verdict


def load_rules(*, config_maps: Sequence[Path] = (), directories: Sequence[Path] = ()
               ) -> HealthRules:
    """Rules from files the operator names: argocd-cm files first, then directory trees.

    Raises ``sources.HealthRuleError`` naming the file (and line) that cannot be used.
    """
    sets = [sources.load_config_map(path) for path in config_maps]
    sets += [sources.load_directory(path) for path in directories]
    return HealthRules(lua=tuple(sets))


ENV_CUSTOMIZATIONS = "CONVEYOR_HEALTH_CUSTOMIZATIONS"
"""Directories of Argo-layout health scripts, separated by ``os.pathsep`` (the operator's)."""


def customizations_from_env(environ: Mapping[str, str]) -> tuple[Path, ...]:
    value = environ.get(ENV_CUSTOMIZATIONS, "")
    return tuple(Path(part) for part in value.split(os.pathsep) if part)


def cel_checks(health: Mapping[str, Any], file: str = "conveyor.yaml"
               ) -> tuple[cel.CompiledCheck, ...]:
    """Compile conveyor.yaml's ``health.checks``; ``cel.CelError`` names file and line."""
    compiled = []
    for item in health.get("checks") or ():
        expressions = {k: str(item[k]) for k in cel.FIELDS if k in item}
        check = cel.CelCheck(str(item["apiVersion"]), str(item["kind"]), expressions,
                             source=f"{file}:{item.get('line', '?')}")
        compiled.append(cel.compile_check(check))
    return tuple(compiled)


def repo_rules(health: Mapping[str, Any], *, files: Mapping[str, str] | None = None,
               config_map: str | None = None) -> HealthRules:
    """The rules a repository declares: conveyor.yaml's CEL checks, its argocd-cm file, then
    its customizations tree (``files``: relative path -> text), in that priority order.

    Raises ``cel.CelError`` or ``sources.HealthRuleError`` naming the file (and line).
    """
    sets: list[LuaRuleSet] = []
    if config_map is not None:
        sets.append(sources.rules_from_config_map(config_map, str(health["argocdConfigMap"])))
    if files:
        sets.append(sources.rules_from_files(files, str(health.get("customizations", ""))))
    return HealthRules(lua=tuple(sets), cel=cel_checks(health))


MAX_REPO_RULE_BYTES = 512 * 1024
"""At most this much rule text travels from the renderer to the applier in one event."""


def read_repo_files(root: Path, health: Mapping[str, Any]) -> dict[str, Any]:
    """The rule files conveyor.yaml's ``health:`` names, read from a checkout at ``root``.

    The result travels in ``render.succeeded`` (``{"customizations": {path: text},
    "argocdConfigMap": text}``) so the applier uses the rules of the very commit it applies.
    Paths stay inside the checkout; ``sources.HealthRuleError`` says what is wrong.
    """
    real_root = root.resolve()
    out: dict[str, Any] = {}
    size = 0
    tree = health.get("customizations")
    if tree:
        path = root / str(tree)
        if not path.resolve().is_relative_to(real_root):
            raise sources.HealthRuleError(f"conveyor.yaml: health.customizations: {tree} "
                                          "points outside the repository")
        if not path.is_dir():
            raise sources.HealthRuleError(f"conveyor.yaml: health.customizations: {tree}: no "
                                          "such directory at this commit")
        out["customizations"] = sources.read_tree(path)
        size += sum(len(text) for text in out["customizations"].values())
    config_map = health.get("argocdConfigMap")
    if config_map:
        path = root / str(config_map)
        if not path.resolve().is_relative_to(real_root) or not path.is_file():
            raise sources.HealthRuleError(f"conveyor.yaml: health.argocdConfigMap: "
                                          f"{config_map}: no such file in the repository")
        out["argocdConfigMap"] = path.read_text(encoding="utf-8", errors="replace")
        size += len(out["argocdConfigMap"])
    if size > MAX_REPO_RULE_BYTES:
        raise sources.HealthRuleError(f"conveyor.yaml: health: the rule files hold {size} "
                                      f"bytes, more than {MAX_REPO_RULE_BYTES}")
    return out


def rules_of_checkout(config_file: Path) -> HealthRules:
    """The rules a conveyor.yaml declares, with its paths read beside it (a working copy):
    what ``conveyor health --config`` uses to show what the applier will."""
    try:
        text = config_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise sources.HealthRuleError(f"{config_file}: {exc}") from None
    try:
        config = parse_config(text, str(config_file))
    except ConfigError as exc:
        raise sources.HealthRuleError(str(exc)) from None
    files = read_repo_files(config_file.parent, config.health)
    return rules_of_event(config.health, files)


def rules_of_event(health: Mapping[str, Any], files: Mapping[str, Any] | None) -> HealthRules:
    """``repo_rules`` from conveyor.yaml's ``health:`` and the files a render carried."""
    files = files or {}
    return repo_rules(health, files=files.get("customizations"),
                      config_map=files.get("argocdConfigMap"))


def engine_for_render(operator: HealthEngine, env: Mapping[str, Any],
                      data: Mapping[str, Any]) -> HealthEngine:
    """The engine of one sync of a render (``render.succeeded`` data): the repository's rules
    at that commit, then the operator's (``operator.rules``), then the built-in ones; a fresh
    engine, sharing ``operator``'s Lua runtime. Raises ``sources.HealthRuleError``."""
    health = env.get("health") or {}
    if not health:
        return operator.with_rules(operator.rules)
    return operator.with_rules(rules_of_event(health, data.get("health_rules"))
                               .then(operator.rules))
