"""Health verdicts per second: built-in rules, Lua scripts and CEL checks over one mixed stream.

Run: .venv/bin/python -m benchmarks.health [--objects 10000]

The stream is every fixture under tests/fixtures/health (Kubernetes kinds, kstatus custom
resources, the built-in custom-resource rules' cases), repeated and shuffled to ``--objects``.
Each engine assesses the whole stream through ``HealthEngine.evaluate``, the applier's path:

1. built-in: no user rules;
2. Lua: one Argo CD-style script (conditions loop, as most of Argo CD's shipped ones) for
   every kind (a ``*`` rule), run in the lupa sandbox with its time and memory limits;
3. CEL: one Flux-style check (inProgress/failed/current over the conditions) per
   apiVersion/kind of the stream.

Figures are verdicts per second and microseconds per verdict; the best of ``--repeat`` runs.
``--compare-cel`` also times the three expressions of one check with each CEL library that is
installed (``common-expression-language``, the one Conveyor uses, and the pure-Python
``cel-python``), compile and evaluate, over the same objects: the measurement the choice
rests on.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.domain.health import Assessment
from orchestrator.health_rules.engine import HealthEngine, HealthRules, cel_checks
from orchestrator.health_rules.lua import LuaScript
from orchestrator.health_rules.sources import LuaRule, LuaRuleSet

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "health"

LUA = """
local hs = {status = "Progressing", message = "Waiting for conditions"}
if obj.status ~= nil and obj.status.conditions ~= nil then
  for i, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" and condition.status == "False" then
      hs.status = "Degraded"
      hs.message = condition.message
      return hs
    end
    if condition.type == "Ready" and condition.status == "True" then
      hs.status = "Healthy"
      hs.message = condition.message
      return hs
    end
  end
end
return hs
"""

CEL = {
    "inProgress": "has(status.conditions) && status.conditions.exists(c, c.type == "
                  "'Reconciling' && c.status == 'True')",
    "failed": "has(status.conditions) && status.conditions.exists(c, c.type == 'Ready' && "
              "c.status == 'False')",
    "current": "has(status.conditions) && status.conditions.exists(c, c.type == 'Ready' && "
               "c.status == 'True')",
}


def stream(count: int, seed: int = 7) -> list[dict[str, Any]]:
    objects = []
    for path in sorted(FIXTURES.rglob("*.yaml")):
        if path.name == "health_test.yaml":
            continue
        obj = yaml.safe_load(path.read_text())
        if isinstance(obj, dict) and obj.get("kind"):
            objects.append(obj)
    rng = random.Random(seed)
    return [rng.choice(objects) for _ in range(count)]


def measure(engine: HealthEngine, objects: list[dict[str, Any]], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        results: list[Assessment] = [engine.evaluate(obj) for obj in objects]
        best = min(best, time.perf_counter() - started)
        assert len(results) == len(objects)
    return best


def compare_cel(objects: list[dict[str, Any]]) -> None:
    sample = objects[:500]
    variables = [{"metadata": {}, "spec": {}, "status": {}, **o} for o in sample]
    try:
        import cel as rust_cel
    except ImportError:
        print("common-expression-language: not installed")
    else:
        started = time.perf_counter()
        programs = [rust_cel.compile(e) for e in CEL.values()]
        compiled = (time.perf_counter() - started) / len(programs)
        started = time.perf_counter()
        for v in variables:
            context = rust_cel.Context(v)
            for program in programs:
                program.execute(context)
        each = (time.perf_counter() - started) / (len(variables) * len(programs))
        print(f"common-expression-language: compile {compiled * 1e6:8.1f} us, "
              f"evaluate {each * 1e6:8.1f} us per expression")
    try:
        import celpy
    except ImportError:
        print("cel-python: not installed (pip install cel-python to compare)")
        return
    env = celpy.Environment()
    started = time.perf_counter()
    py_programs = [env.program(env.compile(e)) for e in CEL.values()]
    compiled = (time.perf_counter() - started) / len(py_programs)
    started = time.perf_counter()
    for v in variables[:100]:
        activation = celpy.json_to_cel(v)
        for program in py_programs:
            program.evaluate(dict(activation))
    each = (time.perf_counter() - started) / (100 * len(py_programs))
    print(f"cel-python:                 compile {compiled * 1e6:8.1f} us, "
          f"evaluate {each * 1e6:8.1f} us per expression")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare-cel", action="store_true")
    args = parser.parse_args()
    objects = stream(args.objects)
    kinds = sorted({(str(o["apiVersion"]), str(o["kind"])) for o in objects})
    lua_rules = HealthRules(lua=(LuaRuleSet("benchmark", (
        LuaRule("*", LuaScript("benchmark/health.lua", LUA)),)),))
    cel_rules = HealthRules(cel=cel_checks({"checks": [
        {"apiVersion": api_version, "kind": kind, **CEL, "line": n}
        for n, (api_version, kind) in enumerate(kinds, start=1)]}))
    engines = {"built-in": HealthEngine(), "lua": HealthEngine(lua_rules),
               "cel": HealthEngine(cel_rules)}
    print(f"{len(objects)} objects of {len(kinds)} kinds, best of {args.repeat}")
    for name, engine in engines.items():
        seconds = measure(engine, objects, args.repeat)
        print(f"{name:9} {len(objects) / seconds:10,.0f} verdicts/s "
              f"{seconds / len(objects) * 1e6:8.1f} us/verdict")
    if args.compare_cel:
        compare_cel(objects)


if __name__ == "__main__":
    main()
