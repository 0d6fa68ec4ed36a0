"""Argo CD Lua health scripts: the sandbox, the sources (directory tree, argocd-cm), overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.health import Health, HealthStatus
from orchestrator.health_rules import lua as lua_module
from orchestrator.health_rules.engine import HealthEngine, HealthRules
from orchestrator.health_rules.lua import INVALID, LuaEngine, LuaScript
from orchestrator.health_rules.sources import (
    HealthRuleError,
    load_config_map,
    load_directory,
    rules_from_config_map,
)

WIDGET: dict[str, Any] = {
    "apiVersion": "widgets.example.com/v1", "kind": "Widget",
    "metadata": {"name": "w", "namespace": "shop"},
    "spec": {"replicas": 3},
    "status": {"ready": 2, "conditions": [{"type": "Ready", "status": "False",
                                           "message": "2 of 3 ready"}]}}

READY_SCRIPT = """
hs = {}
if obj.status ~= nil and obj.status.ready == obj.spec.replicas then
  hs.status = "Healthy"
else
  hs.status = "Progressing"
  hs.message = "Waiting: " .. obj.status.ready .. "/" .. obj.spec.replicas
end
return hs
"""


@pytest.fixture(scope="module")
def lua() -> LuaEngine:
    return LuaEngine(timeout=0.3, max_memory=32 * 1024 * 1024)


def run(lua: LuaEngine, text: str, obj: dict[str, Any] | None = None) -> HealthStatus | None:
    return lua.run(LuaScript("test.lua", text), obj or WIDGET)


def test_a_script_sees_obj_and_returns_a_status(lua: LuaEngine) -> None:
    assert run(lua, READY_SCRIPT) == HealthStatus(Health.PROGRESSING, "Waiting: 2/3")
    ready = {**WIDGET, "status": {"ready": 3}}
    assert run(lua, READY_SCRIPT, ready) == HealthStatus(Health.HEALTHY, "")


def test_argo_cd_libraries_are_there(lua: LuaEngine) -> None:
    script = """
    local os = require("os")
    local json = require("json")
    local t = json.decode('{"a": [1, 2]}')
    local n = table.getn(obj.status.conditions)
    local found = string.find(obj.status.conditions[1].message, "ready", 1, true)
    return {status = "Healthy", message = json.encode(t) .. " " .. n .. " " .. found .. " " ..
            tostring(os.time() > 0) .. " " .. os.date("!%Y-%m-%d", 0) .. " " ..
            tostring(math.floor(2.5)) .. " " .. ("%d"):format(7)}
    """
    assert run(lua, script) == HealthStatus(Health.HEALTHY,
                                            '{"a":[1,2]} 1 8 true 1970-01-01 2 7')


def test_numbers_print_as_in_argo_cd(lua: LuaEngine) -> None:
    obj = {**WIDGET, "spec": {"replicas": 3.0}}
    assert run(lua, 'return {status="Healthy", message=tostring(obj.spec.replicas)}',
               obj) == HealthStatus(Health.HEALTHY, "3")
    assert run(lua, 'return {status="Healthy", message=tostring(6 / 2) .. " " .. '
                    'tostring(7 / 2) .. " " .. tostring(1e300)}') == HealthStatus(
        Health.HEALTHY, "3 3.5 1e+300")


@pytest.mark.parametrize(("script", "reason"), [
    ('return io.open("/etc/passwd"):read("*a")', "attempt to index a nil value (global 'io')"),
    ('os.execute("touch /tmp/conveyor-escaped")', "attempt to call a nil value (field "
                                                  "'execute')"),
    ('os.exit(1)', "attempt to call a nil value (field 'exit')"),
    ('return require("io")', "module 'io' not found"),
    ('return require("test_health_lua")', "module 'test_health_lua' not found"),
    ('return dofile("/etc/passwd")', "global 'dofile'"),
    ('return load("return 1")()', "global 'load'"),
    ('return debug.getregistry()', "global 'debug'"),
    ('return python.eval("1")', "global 'python'"),
    ('return package.loadlib("libc.so.6", "system")', "global 'package'"),
    ('return coroutine.wrap(function() end)', "global 'coroutine'"),
    ('getmetatable("").__index = {}', "attempt to index a boolean value"),
    ('setmetatable({}, {__gc = function() while true do end end})', "__gc metamethods are "
                                                                     "not allowed"),
    ('return require("json").decode.__class__', "attempt to index a function value"),
    ('local m = getmetatable(require("json").decode) return m.__gc', "attempt to index a nil"),
])
def test_sandbox_escapes_fail_safely(lua: LuaEngine, script: str, reason: str) -> None:
    verdict = run(lua, script)
    assert verdict is not None and verdict.status is Health.UNKNOWN
    assert reason in verdict.message
    assert not Path("/tmp/conveyor-escaped").exists()


@pytest.mark.parametrize("script", [
    'local s = string.rep("x", 2^30) return {status = "Healthy"}',
    'local s = ("x"):rep(2^20) local t = {} for i = 1, 1e6 do t[i] = s .. i end',
    'local t = {} for i = 1, 1e9 do t[i] = i end',
])
def test_memory_bombs_fail_safely(lua: LuaEngine, script: str) -> None:
    verdict = run(lua, script)
    assert verdict is not None and verdict.status is Health.UNKNOWN
    assert "memory" in verdict.message or "too large" in verdict.message
    assert run(lua, READY_SCRIPT) == HealthStatus(Health.PROGRESSING, "Waiting: 2/3")


@pytest.mark.parametrize("script", [
    "while true do end",
    "while true do pcall(function() while true do end end) end",
    "local function f() return f() end return f()",
    "local function f() return 1 + f() end while true do pcall(f) end",
    "while true do xpcall(function() while true do end end, function(e) return e end) end",
])
def test_endless_scripts_hit_the_time_limit(lua: LuaEngine, script: str) -> None:
    verdict = run(lua, script)  # returns at all: the limit stopped it (pytest-timeout guards)
    assert verdict is not None and verdict.status is Health.UNKNOWN
    assert "time limit" in verdict.message or "stack overflow" in verdict.message
    assert run(lua, READY_SCRIPT) == HealthStatus(Health.PROGRESSING, "Waiting: 2/3")


def test_backtracking_patterns_are_refused_before_they_run(lua: LuaEngine) -> None:
    for script in ('local r = string.find(string.rep("a", 3000), "a*a*b") return r',
                   'local r = (string.rep("a", 3000)):match(".-.-b") return r'):
        verdict = run(lua, script)
        assert verdict is not None and verdict.status is Health.UNKNOWN
        assert "too expensive" in verdict.message and "test.lua:1:" in verdict.message
    short = 'return {status="Healthy", message=("2 of 3 ready"):match("(%d+) of")}'
    assert run(lua, short) == HealthStatus(Health.HEALTHY, "2")


@pytest.mark.parametrize(("script", "expected"), [
    ('return {status = "Bogus"}', HealthStatus(Health.UNKNOWN, INVALID)),
    ("return 3", HealthStatus(Health.UNKNOWN, "expect table output from Lua script, not int")),
    ("hs = {}", HealthStatus(Health.UNKNOWN, "expect table output from Lua script, not nil")),
    ('return {status = "Healthy", message = {}}',
     HealthStatus(Health.UNKNOWN, "the health message must be a string, not table")),
    ('error("no status yet")', HealthStatus(Health.UNKNOWN, "test.lua:1: no status yet")),
    ("this is not lua", HealthStatus(Health.UNKNOWN, "test.lua:1: syntax error near 'is'")),
    ("return {}", None),
])
def test_bad_results_are_values_not_exceptions(lua: LuaEngine, script: str,
                                               expected: HealthStatus | None) -> None:
    assert run(lua, script) == expected


def test_scripts_share_no_state(lua: LuaEngine) -> None:
    run(lua, 'counter = (counter or 0) + 1; string.find = nil; return {status = "Healthy"}')
    second = run(lua, 'return {status = "Healthy", message = tostring(counter) .. '
                      'tostring(string.find("ab", "b"))}')
    assert second == HealthStatus(Health.HEALTHY, "nil2")


# -- sources -----------------------------------------------------------------------------------

def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_directory_tree_in_argo_layout_overrides_the_builtin_rule(tmp_path: Path) -> None:
    write(tmp_path, "widgets.example.com/Widget/health.lua", READY_SCRIPT)
    write(tmp_path, "apps/Deployment/health.lua", 'return {status = "Suspended", message = '
                                                  '"ours"}')
    write(tmp_path, "_.crossplane.io/_/health.lua", 'return {status = "Degraded"}')
    write(tmp_path, "ConfigMap/health.lua", 'return {status = "Healthy", message = "core"}')
    engine = HealthEngine(HealthRules(lua=(load_directory(tmp_path),)))
    assert engine.evaluate(WIDGET).verdict == HealthStatus(Health.PROGRESSING, "Waiting: 2/3")
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}
    result = engine.evaluate(deployment)
    assert result.verdict == HealthStatus(Health.SUSPENDED, "ours")
    assert result.rule == f"lua:{tmp_path}/apps/Deployment/health.lua"
    provider = {"apiVersion": "pkg.crossplane.io/v1", "kind": "Provider", "metadata": {}}
    assert engine.evaluate(provider).status is Health.DEGRADED
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    assert engine.evaluate(configmap).verdict == HealthStatus(Health.HEALTHY, "core")
    other = {"apiVersion": "other.example.com/v1", "kind": "Widget", "metadata": {}}
    assert engine.evaluate(other).rule == "" and engine.evaluate(other).verdict is None


def test_deletion_and_absence_come_before_user_scripts(tmp_path: Path) -> None:
    write(tmp_path, "widgets.example.com/Widget/health.lua", 'return {status = "Healthy"}')
    engine = HealthEngine(HealthRules(lua=(load_directory(tmp_path),)))
    deleting = {**WIDGET, "metadata": {"name": "w", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert engine.evaluate(deleting).verdict == HealthStatus(Health.PROGRESSING,
                                                             "Pending deletion")
    assert engine.evaluate(None).status is Health.MISSING


def test_a_directory_with_a_misplaced_script_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "a/b/c/health.lua", "return {}")
    with pytest.raises(HealthRuleError, match=r"expected <group>/<Kind>/health\.lua"):
        load_directory(tmp_path)


def test_a_link_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.lua"
    outside.write_text("return {}")
    (tmp_path / "tree" / "apps" / "Deployment").mkdir(parents=True)
    (tmp_path / "tree" / "apps" / "Deployment" / "health.lua").symlink_to(outside)
    with pytest.raises(HealthRuleError, match="links outside"):
        load_directory(tmp_path / "tree")


ARGOCD_CM = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
data:
  resource.customizations.health.widgets.example.com_Widget: |
    return {status = "Degraded", message = "from argocd-cm"}
  resource.customizations.useOpenLibs.widgets.example.com_Widget: "true"
  resource.customizations.health.Service: |
    return {status = "Healthy", message = "core kind"}
  resource.customizations.ignoreDifferences.all: |
    jsonPointers: [/status]
  resource.customizations: |
    "*.aws.crossplane.io/*":
      health.lua: |
        return {status = "Progressing", message = "glob"}
    "ec2.aws.crossplane.io/Instance":
      health.lua: |
        return {status = "Healthy", message = "exact beats glob"}
    apps/Deployment:
      ignoreDifferences: |
        jsonPointers: [/spec/replicas]
"""


def test_argocd_cm_keys_and_wildcards_match_as_in_argo_cd(tmp_path: Path) -> None:
    path = tmp_path / "argocd-cm.yaml"
    path.write_text(ARGOCD_CM)
    engine = HealthEngine(HealthRules(lua=(load_config_map(path),)))
    assert engine.evaluate(WIDGET).verdict == HealthStatus(Health.DEGRADED, "from argocd-cm")
    assert engine.evaluate(WIDGET).rule.startswith(f"lua:{path}:7:")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    assert engine.evaluate(service).verdict == HealthStatus(Health.HEALTHY, "core kind")
    vpc = {"apiVersion": "ec2.aws.crossplane.io/v1beta1", "kind": "VPC", "metadata": {}}
    assert engine.evaluate(vpc).verdict == HealthStatus(Health.PROGRESSING, "glob")
    instance = {"apiVersion": "ec2.aws.crossplane.io/v1alpha1", "kind": "Instance",
                "metadata": {}}
    assert engine.evaluate(instance).verdict == HealthStatus(Health.HEALTHY, "exact beats glob")
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                  "spec": {"replicas": 1}}
    assert engine.evaluate(deployment).rule == "built-in"


def test_sources_are_asked_in_priority_order(tmp_path: Path) -> None:
    write(tmp_path / "tree", "widgets.example.com/Widget/health.lua", 'return {status = '
                                                                       '"Healthy"}')
    first = rules_from_config_map(ARGOCD_CM, "argocd-cm.yaml")
    engine = HealthEngine(HealthRules(lua=(first, load_directory(tmp_path / "tree"))))
    assert engine.evaluate(WIDGET).status is Health.DEGRADED
    engine = HealthEngine(HealthRules(lua=(load_directory(tmp_path / "tree"), first)))
    assert engine.evaluate(WIDGET).status is Health.HEALTHY


@pytest.mark.parametrize(("text", "message"), [
    ("kind: ConfigMap\ndata: [1]\n", "argocd-cm.yaml:2:1: data must be a mapping"),
    ("kind: ConfigMap\ndata:\n  resource.customizations.health.a_B: 3\n",
     "argocd-cm.yaml:3: resource.customizations.health.a_B must be a string"),
    ("kind: Secret\n", "argocd-cm.yaml: expected one ConfigMap (argocd-cm), found 0"),
    ("kind: ConfigMap\ndata: {a: [\n", "argocd-cm.yaml:3:1:"),
    ("kind: ConfigMap\ndata:\n  resource.customizations: '{a: ['\n",
     "argocd-cm.yaml:3: resource.customizations is not YAML"),
])
def test_a_bad_config_map_names_file_and_line(text: str, message: str) -> None:
    with pytest.raises(HealthRuleError) as caught:
        rules_from_config_map(text, "argocd-cm.yaml")
    assert str(caught.value).startswith(message)


def test_a_script_that_timed_out_is_not_run_again_in_the_same_sync(tmp_path: Path) -> None:
    write(tmp_path, "widgets.example.com/Widget/health.lua", "while true do end")
    engine = HealthEngine(HealthRules(lua=(load_directory(tmp_path),)),
                          lua=LuaEngine(timeout=0.2))
    first = engine.evaluate(WIDGET)
    assert first.status is Health.UNKNOWN and "time limit" in first.message
    again = [engine.evaluate(WIDGET) for _ in range(20)]
    assert all(a.status is Health.UNKNOWN and "not run again in this sync" in a.message
               for a in again)
    fresh = engine.with_rules(engine.rules)  # the next sync tries again
    assert "not run again" not in fresh.evaluate(WIDGET).message


def test_compiled_scripts_are_bounded_and_recompiled_when_needed() -> None:
    engine = LuaEngine()
    first = LuaScript("first.lua", 'return {status = "Healthy", message = "first"}')
    assert engine.run(first, WIDGET) == HealthStatus(Health.HEALTHY, "first")
    for n in range(lua_module.COMPILED_KEPT + 5):
        engine.run(LuaScript(f"s{n}.lua", f'return {{status = "Healthy", message = "{n}"}}'),
                   WIDGET)
    assert len(engine._ids) == lua_module.COMPILED_KEPT
    assert engine.run(first, WIDGET) == HealthStatus(Health.HEALTHY, "first")
