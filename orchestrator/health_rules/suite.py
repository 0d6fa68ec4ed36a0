"""Running Argo CD ``health_test.yaml`` files: what ``conveyor health test DIR`` prints.

The format is Argo CD's (``resource_customizations/<group>/<Kind>/health_test.yaml``)::

    tests:
      - healthStatus: {status: Degraded, message: "..."}
        inputPath: testdata/degraded.yaml

Each file is run against the ``health.lua`` beside it, through the same ``HealthEngine`` the
applier uses (so "Pending deletion" and Missing come first, as in a cluster), for objects of the
kind its directory names (``<group>/<Kind>`` under DIR; anything, when the directory is
elsewhere). As in Argo CD's own test, a case passes when status and message both equal the
expected ones (an absent message expects ""). With ``builtin=True`` the scripts are ignored and
the built-in rules answer, with the directory's kind: the measure of how far the built-ins agree
with a corpus of fixtures; a case then passes on the status alone, the message is reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.domain.health import Assessment
from orchestrator.health_rules.engine import HealthEngine, HealthRules
from orchestrator.health_rules.lua import LuaScript
from orchestrator.health_rules.sources import (
    SCRIPT_FILE,
    TEST_FILE,
    LuaRule,
    LuaRuleSet,
)


@dataclass(frozen=True, slots=True)
class Case:
    """One test case and its outcome (``error`` when it could not be run at all)."""

    suite: str
    input_path: str
    expected_status: str
    expected_message: str | None
    result: Assessment | None = None
    error: str = ""
    builtin: bool = False

    @property
    def status_agrees(self) -> bool:
        return self.result is not None and self.result.verdict is not None \
            and self.result.verdict.status.value == self.expected_status

    @property
    def message_agrees(self) -> bool:
        return self.result is not None and self.result.message == (self.expected_message or "")

    @property
    def passed(self) -> bool:
        if self.error:
            return False
        return self.status_agrees and (self.builtin or self.message_agrees)

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "input": self.input_path, "passed": self.passed,
                "expected": {"status": self.expected_status,
                             "message": self.expected_message or ""},
                "actual": None if self.result is None or self.result.verdict is None else {
                    "status": self.result.verdict.status.value,
                    "message": self.result.verdict.message},
                "rule": self.result.rule if self.result is not None else "",
                "error": self.error}

    def __str__(self) -> str:
        head = f"{'PASS' if self.passed else 'FAIL'} {self.suite} {self.input_path}"
        if self.error:
            return f"{head}: {self.error}"
        expected = _show(self.expected_status, self.expected_message or "")
        actual = str(self.result)
        if self.passed and (self.message_agrees or not self.builtin):
            return f"{head}: {actual}"
        if self.passed:
            return f"{head}: {actual} (expected message: {self.expected_message or ''!r})"
        return f"{head}: expected {expected}, got {actual}"


def _show(status: str, message: str) -> str:
    return f"{status} ({message})" if message else status


def find_suites(root: Path) -> list[Path]:
    """Every ``health_test.yaml`` under ``root`` (or ``root`` itself when it is one)."""
    if root.is_file():
        return [root]
    return sorted(root.rglob(TEST_FILE))


def _pattern(root: Path, directory: Path) -> str:
    """The kind a suite's directory names: ``group/Kind``, ``Kind``, or ``*`` elsewhere."""
    try:
        parts = directory.relative_to(root).parts
    except ValueError:
        return "*"
    if len(parts) in (1, 2) and parts[-1][:1].isupper():
        return "/".join("*" + p[1:] if p == "_" or p.startswith("_.") else p for p in parts)
    return "*"


def _load_tests(spec: Path) -> list[Mapping[str, Any]]:
    data = yaml.safe_load(spec.read_text(encoding="utf-8")) or {}
    tests = data.get("tests") if isinstance(data, Mapping) else None
    if not isinstance(tests, list) or not all(isinstance(t, Mapping) for t in tests):
        raise ValueError("expected 'tests: [{healthStatus: {status, message}, inputPath}]'")
    return tests


def run_suite(spec: Path, root: Path, engine: HealthEngine, *, builtin: bool = False
              ) -> Iterator[Case]:
    directory = spec.parent
    label = str(directory.relative_to(root)) if directory != root and \
        directory.is_relative_to(root) else str(directory)
    try:
        tests = _load_tests(spec)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        yield Case(label, spec.name, "", None, error=f"{spec}: {exc}", builtin=builtin)
        return
    if builtin:
        suite_engine = engine.with_rules(HealthRules())
    else:
        script = directory / SCRIPT_FILE
        if not script.is_file():
            for test in tests:
                yield Case(label, str(test.get("inputPath", "")), "", None,
                           error=f"no {SCRIPT_FILE} beside {spec}")
            return
        rule = LuaRule(_pattern(root, directory),
                       LuaScript(str(script), script.read_text(encoding="utf-8")))
        suite_engine = engine.with_rules(HealthRules(lua=(LuaRuleSet(str(directory), (rule,)),)))
    for test in tests:
        yield _case(label, directory, test, suite_engine, builtin=builtin)


def _case(label: str, directory: Path, test: Mapping[str, Any], engine: HealthEngine, *,
          builtin: bool) -> Case:
    raw = test.get("healthStatus")
    expected: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    input_path = str(test.get("inputPath", ""))
    status = str(expected.get("status", ""))
    message = expected.get("message")
    base = Case(label, input_path, status, None if message is None else str(message),
                builtin=builtin)
    try:
        obj = yaml.safe_load((directory / input_path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        return _with(base, error=f"cannot read {input_path}: {exc}")
    if not isinstance(obj, Mapping):
        return _with(base, error=f"{input_path} is not a Kubernetes object")
    return _with(base, result=engine.evaluate(obj))


def _with(case: Case, *, result: Assessment | None = None, error: str = "") -> Case:
    return dataclasses.replace(case, result=result, error=error)


def run_all(root: Path, engine: HealthEngine, *, builtin: bool = False) -> list[Case]:
    return [case for spec in find_suites(root)
            for case in run_suite(spec, root if root.is_dir() else root.parent, engine,
                                  builtin=builtin)]


def summary(cases: list[Case]) -> str:
    passed = sum(c.passed for c in cases)
    errors = sum(bool(c.error) for c in cases)
    suites = len({c.suite for c in cases})
    line = f"{passed} passed, {len(cases) - passed - errors} failed, {errors} errors " \
           f"in {suites} suite(s)"
    if cases and cases[0].builtin:
        both = sum(c.status_agrees and c.message_agrees for c in cases)
        line += (f"; built-in rules agree on the status of {passed}/{len(cases)} "
                 f"({100 * passed / len(cases):.0f}%), on status and message of {both}")
    return line


