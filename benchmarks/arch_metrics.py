"""Architecture figures of the product packages (conveyor, orchestrator, services).

Run from the tree root: ``python -m benchmarks.arch_metrics [--list]``

- modules: .py files in the product packages;
- largest module: the longest one, in lines;
- import cycles: strongly connected groups of more than one module in grimp's import graph
  (the graph import-linter checks; imports under ``if TYPE_CHECKING`` are left out, as they
  never run);
- function-local imports: ``import`` statements inside a function body; "optional" counts
  those with a comment saying ``optional`` on the line or the three above (an optional
  dependency, which is the one accepted reason);
- module-level mutable names: module-level assignments whose value is a list, dict or set
  (display or comprehension) or a call that does not build a known frozen value (the calls
  below, and the product's own frozen dataclasses, NamedTuples and Enums);
- of which state: those the module changes (item assignment, ``global``, a mutating method)
  or that hold a lock, a thread-local, a metric or a registry: what two instances in one
  process would share;
- module-level caches: functions under ``functools.cache``/``lru_cache`` (a cache that holds
  a resource outlives the instance that made it);
- contracts: ``[[tool.importlinter.contracts]]`` entries in pyproject.toml;
- modules over 400 lines: the size above which a module is usually two (each should say at
  its top why it is one).

``--list`` prints each function-local import and mutable name with its place, to check the
counts by eye.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("conveyor", "orchestrator", "services")

# Calls whose result cannot be changed in place, or that is a per-context value by design.
FROZEN_CALLS = frozenset(
    {
        "frozenset", "tuple", "str", "int", "float", "bytes", "bool", "object", "range",
        "compile", "get_logger", "getLogger", "TypeVar", "ParamSpec", "NewType", "AppKey",
        "MappingProxyType", "Path", "timedelta", "ContextVar", "namedtuple", "NamedTuple",
        "Literal", "Final", "cast", "dataclass", "field", "PurePosixPath", "Template",
        "escape", "join", "format", "encode", "len", "sorted_tuple",
    }
)
STATEFUL_CALLS = frozenset(
    {
        "Lock", "RLock", "local", "Semaphore", "Event", "Condition", "Histogram", "Counter",
        "Gauge", "Summary", "CollectorRegistry", "dict", "list", "set", "defaultdict",
        "WeakValueDictionary", "WeakKeyDictionary", "OrderedDict", "deque",
        "Metrics",  # orchestrator.metrics: a set of prometheus collectors and their registry
    }
)
MUTATORS = frozenset(
    {
        "append", "add", "update", "setdefault", "pop", "popitem", "clear", "extend",
        "remove", "discard", "insert", "__setitem__",
    }
)
MUTABLE_NODES = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)


def product_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def frozen_classes(trees: list[ast.Module]) -> frozenset[str]:
    """Names of the product's classes whose instances cannot change: ``@dataclass(frozen=True)``,
    ``NamedTuple`` and ``Enum`` subclasses."""
    found: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
            frozen_deco = any(
                isinstance(d, ast.Call) and _call_name(d) == "dataclass"
                and any(k.arg == "frozen" and isinstance(k.value, ast.Constant) and k.value.value
                        for k in d.keywords)
                for d in node.decorator_list)
            if frozen_deco or bases & {"NamedTuple", "Enum", "StrEnum", "IntEnum"}:
                found.add(node.name)
    return frozenset(found)


def _is_mutable(value: ast.expr | None, frozen: frozenset[str] = frozenset()) -> bool:
    if value is None:
        return False
    if isinstance(value, MUTABLE_NODES):
        return True
    if isinstance(value, ast.Call):
        return _call_name(value) not in FROZEN_CALLS | frozen
    return False


def mutable_names(tree: ast.Module,
                  frozen: frozenset[str] = frozenset()) -> Iterator[tuple[int, str]]:
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        if not _is_mutable(value, frozen):
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id != "__all__":
                yield node.lineno, target.id


def mutated_names(tree: ast.Module) -> set[str]:
    """Names this module changes in place or rebinds through ``global``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found.update(node.names)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
            if isinstance(node.value, ast.Name):
                found.add(node.value.id)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in MUTATORS and isinstance(node.func.value, ast.Name)):
            found.add(node.func.value.id)
    return found


def state_names(tree: ast.Module,
                frozen: frozenset[str] = frozenset()) -> Iterator[tuple[int, str]]:
    mutated = mutated_names(tree)
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    values[target.id] = node.value
    for line, name in mutable_names(tree, frozen):
        value = values.get(name)
        stateful_call = isinstance(value, ast.Call) and _call_name(value) in STATEFUL_CALLS
        if name in mutated or stateful_call:
            yield line, name


def caches(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name in ("cache", "lru_cache"):
                yield node.lineno, node.name


def local_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                yield node.lineno, ", ".join(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                yield node.lineno, "." * node.level + (node.module or "")


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative (the graph can be deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, ()))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                result.append(group)
    return result


def import_cycles() -> list[list[str]]:
    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & graph.modules
             for m in graph.modules}
    return sorted((sorted(g) for g in _sccs(edges) if len(g) > 1), key=len, reverse=True)


def contracts() -> int:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return len(data.get("tool", {}).get("importlinter", {}).get("contracts", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print each finding")
    args = parser.parse_args()
    files = product_files()
    largest = max(files, key=lambda p: len(p.read_text().splitlines()))
    locals_found: list[str] = []
    optional = 0
    mutables: list[str] = []
    states: list[str] = []
    cached: list[str] = []
    trees = {path: ast.parse(path.read_text(), str(path)) for path in files}
    frozen = frozen_classes(list(trees.values()))
    big = [p for p in files if len(p.read_text().splitlines()) > 400]
    for path, tree in trees.items():
        rel = path.relative_to(ROOT)
        source = path.read_text().splitlines()
        for line, what in local_imports(tree):
            marked = any("optional" in text.lower() for text in source[max(0, line - 4):line])
            optional += marked
            locals_found.append(f"{rel}:{line} {what}" + (" (optional)" if marked else ""))
        mutables += [f"{rel}:{line} {name}" for line, name in mutable_names(tree, frozen)]
        states += [f"{rel}:{line} {name}" for line, name in state_names(tree, frozen)]
        cached += [f"{rel}:{line} {name}" for line, name in caches(tree)]
    cycles = import_cycles()
    rows = [
        ("modules", str(len(files))),
        ("largest module",
         f"{largest.relative_to(ROOT)} ({len(largest.read_text().splitlines())} lines)"),
        ("import cycles (SCCs > 1 module)",
         f"{len(cycles)} ({sum(len(c) for c in cycles)} modules)"),
        ("function-local imports", f"{len(locals_found)} ({optional} optional dependencies)"),
        ("module-level mutable names", str(len(mutables))),
        ("... of which state (mutated, locks, metrics)", str(len(states))),
        ("module-level caches", str(len(cached))),
        ("import-linter contracts", str(contracts())),
        ("modules over 400 lines", str(len(big))),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.list:
        print("\ncycles:")
        for cycle in cycles:
            print("  " + " <-> ".join(cycle))
        print("\nfunction-local imports:")
        print("\n".join("  " + x for x in locals_found))
        print("\nmodule-level mutable names:")
        print("\n".join("  " + x for x in mutables))
        print("\nof which state:")
        print("\n".join("  " + x for x in states))
        print("\nmodule-level caches:")
        print("\n".join("  " + x for x in cached))
        print("\nmodules over 400 lines:")
        print("\n".join(f"  {p.relative_to(ROOT)} ({len(p.read_text().splitlines())})"
                        for p in big))


if __name__ == "__main__":
    main()
