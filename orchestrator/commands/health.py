"""``conveyor health -f FILE|-`` and ``conveyor health test DIR``.

``health -f``: the health of each object in a manifest stream.

Reads what ``kubectl get -o yaml`` or ``-o json`` prints (a ``kind: List`` or a typed list such
as ``DeploymentList``), or any multi-document YAML or JSON, and prints one line per object::

    Deployment/shop/web: Progressing (Waiting for rollout to finish: 1 out of 3 new replicas...)
    Namespace/shop: n/a (no health assessment)
    Widget/shop/w: n/a (no health rule)

or, with ``-o json``, a JSON list of ``{kind, namespace, name, status, message, rule}``
(``status`` null for objects without a verdict; ``rule`` "" when no rule knows the kind, which
is the hint to write one). Objects without ``metadata.name`` (a ``generateName``, a fixture)
are assessed too. The exit status is 0 whatever the health, 1 when the input or a rule file
cannot be read or parsed (nothing is printed on stdout then, errors go to stderr with
file:line), 2 for an unknown output format. The verdicts come from the ``HealthEngine`` the
applier uses, with the user rules given (``--customizations DIR``, ``--argocd-cm FILE``,
``CONVEYOR_HEALTH_CUSTOMIZATIONS``); this module only reads, parses and prints.

``health test DIR``: runs the Argo CD ``health_test.yaml`` files under DIR against the scripts
beside them and prints PASS/FAIL per case and a summary; exit 0 when all pass, 1 otherwise, 2
when there is nothing to run (``orchestrator.health_rules.suite``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator.domain.health import Assessment
from orchestrator.domain.yamlpos import YamlSyntaxError, load_all
from orchestrator.health_rules import suite
from orchestrator.health_rules.engine import HealthEngine
from orchestrator.health_rules.sources import TEST_FILE

OUTPUTS = ("text", "json")


class InputError(ValueError):
    """The input is not a manifest stream; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Located:
    """An object and where it was read from (``file:line`` or ``file: items[3]``)."""

    obj: Mapping[str, Any]
    where: str


def _check_object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str) \
            or not value.get("kind"):
        raise InputError(f"{where}: not a Kubernetes object (expected a mapping with apiVersion "
                         "and kind)")
    metadata = value.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InputError(f"{where}: {value['kind']}: metadata must be a mapping")
    return value


def _expand(value: object, where: str, item_where: Any) -> Iterator[Located]:
    """One document: an object, or a list whose items are objects."""
    if isinstance(value, Mapping) and str(value.get("kind", "")).endswith("List") \
            and "items" in value:
        items = value.get("items") or []
        if not isinstance(items, list):
            raise InputError(f"{where}: items of a {value['kind']} must be a list")
        # A typed list from the API (DeploymentList) leaves kind and apiVersion off its items.
        item_kind = str(value["kind"])[:-len("List")]
        defaults = {"apiVersion": value.get("apiVersion"), "kind": item_kind} \
            if item_kind else {}
        for index, item in enumerate(items):
            at = item_where(index)
            if isinstance(item, Mapping) and defaults and "kind" not in item:
                item = {**defaults, **item}
            yield Located(_check_object(item, at), at)
        return
    yield Located(_check_object(value, where), where)


def _parse_json(text: str, file: str) -> list[Located]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{file}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    documents = data if isinstance(data, list) else [data]
    found: list[Located] = []
    for number, document in enumerate(documents, start=1):
        where = file if len(documents) == 1 else f"{file}: [{number - 1}]"
        found.extend(_expand(document, where, lambda i, w=where: f"{w}: items[{i}]"))
    return found


def _parse_yaml(text: str, file: str) -> list[Located]:
    found: list[Located] = []
    try:
        for document in load_all(text, file):
            if document.value is None:
                continue  # an empty document (a trailing ---)
            where = f"{document.start.file}:{document.start.line}"
            found.extend(_expand(
                document.value, where,
                lambda i, d=document: f"{d.where('items', i).file}:{d.where('items', i).line}"))
    except YamlSyntaxError as exc:
        raise InputError(str(exc)) from None
    return found


def parse_stream(text: str, file: str) -> list[Located]:
    """Every object of a manifest stream, in order; InputError says where it went wrong."""
    if text.lstrip().startswith(("{", "[")):
        return _parse_json(text, file)
    return _parse_yaml(text, file)


def _name(metadata: Mapping[str, Any]) -> str:
    """The name, else ``generateName`` followed by ``*``, else ``(unnamed)``."""
    name = metadata.get("name")
    if isinstance(name, str) and name:
        return name
    prefix = metadata.get("generateName")
    return f"{prefix}*" if isinstance(prefix, str) and prefix else "(unnamed)"


def describe(obj: Mapping[str, Any]) -> str:
    """``Kind/namespace/name``, or ``Kind/name`` for a cluster-scoped object."""
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace") or ""
    name = _name(metadata)
    return f"{obj.get('kind')}/{namespace}/{name}" if namespace else f"{obj.get('kind')}/{name}"


def _text_line(obj: Mapping[str, Any], health: Assessment) -> str:
    return f"{describe(obj)}: {health}"


def _json_item(obj: Mapping[str, Any], health: Assessment) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    return {"kind": obj.get("kind"), "namespace": metadata.get("namespace") or "",
            "name": metadata.get("name") or _name(metadata),
            "status": health.status.value if health.status is not None else None,
            "message": health.message, "rule": health.rule}


def health_command(file: str, output: str = "text", *, engine: HealthEngine | None = None,
                   stdin: TextIO | None = None, stdout: TextIO | None = None,
                   stderr: TextIO | None = None) -> int:
    """Print the health of every object in FILE (``-`` for stdin); see the module docstring."""
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    if output not in OUTPUTS:
        print(f"conveyor health: unknown output format {output!r} (use one of: "
              f"{', '.join(OUTPUTS)})", file=stderr)
        return 2
    name = "<stdin>" if file == "-" else file
    try:
        text = stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"conveyor health: cannot read {name}: {reason}", file=stderr)
        return 1
    try:
        objects = parse_stream(text, name)
    except InputError as exc:
        print(f"conveyor health: {exc}", file=stderr)
        return 1
    engine = engine if engine is not None else HealthEngine()
    results = [(located.obj, engine.evaluate(located.obj)) for located in objects]
    if output == "json":
        json.dump([_json_item(obj, health) for obj, health in results], stdout, indent=2)
        stdout.write("\n")
    else:
        for obj, health in results:
            print(_text_line(obj, health), file=stdout)
    return 0


def health_test_command(path: str, output: str = "text", *, builtin: bool = False,
                        engine: HealthEngine | None = None, stdout: TextIO | None = None,
                        stderr: TextIO | None = None) -> int:
    """Run the ``health_test.yaml`` files under ``path``; see the module docstring."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    root = Path(path)
    if not root.exists():
        print(f"conveyor health test: {path}: no such file or directory", file=stderr)
        return 2
    cases = suite.run_all(root, engine if engine is not None else HealthEngine(),
                          builtin=builtin)
    if not cases:
        print(f"conveyor health test: no {TEST_FILE} under {path}", file=stderr)
        return 2
    if output == "json":
        json.dump({"cases": [c.to_dict() for c in cases], "summary": suite.summary(cases)},
                  stdout, indent=2)
        stdout.write("\n")
    else:
        for case in cases:
            print(case, file=stdout)
        print(suite.summary(cases), file=stdout)
    return 0 if all(c.passed for c in cases) else 1
