"""``conveyor health FILE|-``: the health of each object in a manifest stream.

Reads what ``kubectl get -o yaml`` or ``-o json`` prints (a ``kind: List`` or a typed list such
as ``DeploymentList``), or any multi-document YAML or JSON, and prints one line per object::

    Deployment/shop/web: Progressing (Waiting for rollout to finish: 1 out of 3 new replicas...)
    Namespace/shop: n/a (no health assessment)

or, with ``-o json``, a JSON list of ``{kind, namespace, name, status, message}`` (``status``
null for objects with no notion of health). The exit status is 0 whatever the health, 1 when
the input cannot be read or parsed (nothing is printed on stdout then, errors go to stderr
with file:line), 2 for an unknown output format. The assessment is the pure
``orchestrator.domain.health.assess``; this module only reads, parses and prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator.domain.health import HealthStatus, assess
from orchestrator.domain.yamlpos import YamlSyntaxError, load_all

OUTPUTS = ("text", "json")
NO_HEALTH = "n/a (no health assessment)"


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
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        raise InputError(f"{where}: {value['kind']} has no metadata.name")
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


def describe(obj: Mapping[str, Any]) -> str:
    """``Kind/namespace/name``, or ``Kind/name`` for a cluster-scoped object."""
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace") or ""
    name = metadata.get("name") or ""
    return f"{obj.get('kind')}/{namespace}/{name}" if namespace else f"{obj.get('kind')}/{name}"


def _text_line(obj: Mapping[str, Any], health: HealthStatus | None) -> str:
    return f"{describe(obj)}: {health if health is not None else NO_HEALTH}"


def _json_item(obj: Mapping[str, Any], health: HealthStatus | None) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    return {"kind": obj.get("kind"), "namespace": metadata.get("namespace") or "",
            "name": metadata.get("name"),
            "status": health.status.value if health is not None else None,
            "message": health.message if health is not None else ""}


def health_command(file: str, output: str = "text", *, stdin: TextIO | None = None,
                   stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
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
    results = [(located.obj, assess(located.obj)) for located in objects]
    if output == "json":
        json.dump([_json_item(obj, health) for obj, health in results], stdout, indent=2)
        stdout.write("\n")
    else:
        for obj, health in results:
            print(_text_line(obj, health), file=stdout)
    return 0
