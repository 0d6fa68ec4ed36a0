"""Text to located objects: YAML/JSON streams into Manifests that remember file and line.

Empty documents are skipped, ``kind: List`` (and ``*List`` with ``items``) is flattened, and
every problem - a syntax error, a document that is not a mapping - is collected rather than
raised, so one render reports all of them at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.domain.yamlpos import MAX_DEPTH, Document, Position, YamlSyntaxError, load_all
from orchestrator.rendering.model import Manifest


@dataclass(frozen=True, slots=True)
class Located:
    """A Manifest plus, when it came from a file we parsed, the positions of its fields."""

    manifest: Manifest
    doc: Document | None = None
    path: tuple[str | int, ...] = ()  # where the object sits inside doc (List items)

    def where(self, *field: str | int) -> str:
        if self.doc is None:
            return self.manifest.source
        return str(self.doc.where(*self.path, *field))


NOT_AN_OBJECT = "expected a Kubernetes object (a mapping)"


def is_list(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("kind"), str)
            and value["kind"].endswith("List") and isinstance(value.get("items"), list))


def _flatten(value: Any, doc: Document | None, path: tuple[str | int, ...], file: str,
             source: str | None, out: list[Located], errors: list[str]) -> None:
    pos = doc.where(*path) if doc is not None else None
    label = source if source is not None else (f"{file}:{pos.line}" if pos else file)
    if value is None:
        return
    if is_list(value):
        for i, item in enumerate(value["items"]):
            _flatten(item, doc, (*path, "items", i), file, source, out, errors)
        return
    if not isinstance(value, dict):
        where = str(pos) if pos else label
        errors.append(f"{where}: {NOT_AN_OBJECT}, got {type(value).__name__}")
        return
    out.append(Located(Manifest(value, label), doc, path))


def parse_yaml(text: str, file: str, *, source: str | None = None
               ) -> tuple[list[Located], list[str]]:
    """Every object of a YAML stream; ``source`` overrides the per-object ``file:line``."""
    out: list[Located] = []
    errors: list[str] = []
    try:
        for doc in load_all(text, file):
            _flatten(doc.value, doc, (), file, source, out, errors)
    except YamlSyntaxError as exc:
        errors.append(str(exc))
    return out, errors


def parse_tool_output(text: str, label: str) -> tuple[list[Located], list[str]]:
    """A trusted tool's YAML output (kustomize): libyaml speed, no per-field positions.

    The tool already parsed and checked the inputs, its output is size-capped by ``run_tool``
    and holds no aliases, and positions in it would mean nothing to a person anyway.
    """
    out: list[Located] = []
    errors: list[str] = []
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        for value in yaml.load_all(text, Loader=loader):
            _flatten(value, None, (), label, label, out, errors)
    except yaml.YAMLError as exc:
        errors.append(f"{label}: unreadable tool output: {exc}")
    return out, errors


def parse_json(text: str, file: str, *, source: str | None = None
               ) -> tuple[list[Located], list[str]]:
    """A JSON file: an object, a list of objects or a List. Errors name line and column."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [f"{file}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"]
    except RecursionError:  # deeper than the interpreter's stack: refused like a deep YAML
        return [], [f"{file}:1:1: nesting deeper than {MAX_DEPTH} levels"]
    if _too_deep(value, MAX_DEPTH):
        return [], [f"{file}:1:1: nesting deeper than {MAX_DEPTH} levels"]
    # JSON is YAML: reparse for positions; fall back to the JSON value without them.
    try:
        docs = list(load_all(text, file))
    except YamlSyntaxError:
        docs = []
    out: list[Located] = []
    errors: list[str] = []
    if len(docs) == 1 and docs[0].value == value:
        doc: Document | None = docs[0]
    else:
        doc = Document(value, Position(file, 1, 1), {(): Position(file, 1, 1)})
    if isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(item, doc, (i,), file, source, out, errors)
    else:
        _flatten(value, doc, (), file, source, out, errors)
    return out, errors


def _too_deep(value: Any, limit: int) -> bool:
    """Is ``value`` nested deeper than ``limit``? Iterative: a deep value cannot overflow it."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def parse_file(text: str, file: str) -> tuple[list[Located], list[str]]:
    if file.endswith(".json"):
        return parse_json(text, file)
    return parse_yaml(text, file)


def decode(data: bytes, file: str) -> tuple[str | None, list[str]]:
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        return None, [f"{file}:1:1: not UTF-8 text (byte {exc.start})"]
