"""Flux-style CEL health checks (``healthCheckExprs`` of Flux's Kustomization), from conveyor.yaml.

Each check names an ``apiVersion`` and ``kind`` (matched exactly, as Flux does) and up to three
expressions over the object, whose top-level fields are the variables (``status``, ``metadata``,
``spec``...; ``metadata``, ``spec`` and ``status`` are ``{}`` when the object has none):

- ``current`` (required): the object is ready, Healthy;
- ``inProgress``: still working, Progressing;
- ``failed``: will not get better by waiting, Degraded.

They are evaluated in Flux's order, inProgress, failed, current; the first true one decides,
none true is Progressing. As kstatus, a controller that has not observed the latest
generation is Progressing before any expression is asked. An expression that fails (a field
that does not exist yet, a type error) or does not give a bool is Progressing with the error,
as Flux keeps waiting on it until the health timeout; use ``has()`` to guard optional fields.

The evaluator is ``common-expression-language`` (Python bindings of Rust's ``cel`` crate),
chosen by measurement against the pure-Python ``cel-python``: on this check's kind of
expressions it compiles about 40x and evaluates about 30x faster
(``python -m benchmarks.health --compare-cel``) and gives the same answers; neither parses
CEL's optional syntax (``status.?conditions``) yet, which ``compile_check`` reports with the
file and line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cel as celexpr

from orchestrator.domain.health import Health, HealthStatus, kstatus
from orchestrator.health_rules.sources import HealthRuleError

FIELDS = ("inProgress", "failed", "current")
"""Flux's evaluation order."""
_VERDICTS = MappingProxyType({"inProgress": Health.PROGRESSING, "failed": Health.DEGRADED,
             "current": Health.HEALTHY})


class CelError(HealthRuleError):
    """An expression that does not compile; the message names where it was written."""


@dataclass(frozen=True, slots=True)
class CelCheck:
    """One ``health.checks`` item: the kind it is for and its expressions (source text)."""

    api_version: str
    kind: str
    expressions: Mapping[str, str]
    source: str = "conveyor.yaml"


@dataclass(frozen=True, slots=True)
class CompiledCheck:
    check: CelCheck
    programs: tuple[tuple[str, Any], ...]


def compile_check(check: CelCheck) -> CompiledCheck:
    if "current" not in check.expressions:
        raise CelError(f"{check.source}: a health check needs a 'current' expression")
    programs = []
    for name in FIELDS:
        text = check.expressions.get(name)
        if text is None:
            continue
        try:
            programs.append((name, celexpr.compile(text)))
        except (ValueError, RuntimeError) as exc:
            raise CelError(f"{check.source}: {name}: {_first_line(exc)}") from None
    return CompiledCheck(check, tuple(programs))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def evaluate(compiled: CompiledCheck, obj: Mapping[str, Any]) -> HealthStatus:
    """The check's verdict on ``obj``; never raises."""
    lag = kstatus.generation_lag(obj)
    if lag is not None:
        return lag
    variables = {"metadata": {}, "spec": {}, "status": {}, **obj}
    context = celexpr.Context(variables)
    for name, program in compiled.programs:
        try:
            value = program.execute(context)
        except Exception as exc:  # the evaluator raises KeyError, RuntimeError, TypeError...
            return HealthStatus(Health.PROGRESSING, f"{compiled.check.source}: {name}: cannot "
                                f"evaluate: {_first_line(exc)}")
        if not isinstance(value, bool):
            return HealthStatus(Health.PROGRESSING, f"{compiled.check.source}: {name}: must "
                                f"give a bool, gave {type(value).__name__}")
        if value:
            return HealthStatus(_VERDICTS[name], f"{name}: {compiled.check.expressions[name]}")
    return HealthStatus(Health.PROGRESSING, "no health expression is true yet")


def find(checks: tuple[CompiledCheck, ...], obj: Mapping[str, Any]) -> CompiledCheck | None:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    for compiled in checks:
        if compiled.check.api_version == api_version and compiled.check.kind == kind:
            return compiled
    return None
