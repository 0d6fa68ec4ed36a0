"""YAML parsing that remembers where things came from (file, line, column).

PyYAML's composer already knows every node's position; we keep it so that a bad field in
conveyor.yaml or a manifest is reported as ``file:line:column: reason`` instead of a bare
traceback. Pure: text in, values and positions out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

# A document deeper than this is refused before it can exhaust the stack (YAML bombs).
MAX_DEPTH = 100
# Aliases expand by reference in PyYAML, but a consumer that serialises the result pays
# the full price: cap the number of alias uses per document (billion laughs).
MAX_ALIASES = 1000


@dataclass(frozen=True, slots=True)
class Position:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class YamlSyntaxError(ValueError):
    def __init__(self, file: str, line: int, column: int, reason: str) -> None:
        super().__init__(f"{file}:{line}:{column}: {reason}")
        self.position = Position(file, line, column)
        self.reason = reason


PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Document:
    """One parsed YAML document: its value, its start position and each path's position."""

    value: Any
    start: Position
    positions: dict[PathKey, Position]

    def where(self, *path: str | int) -> Position:
        """The position of the deepest known prefix of ``path``."""
        for end in range(len(path), -1, -1):
            pos = self.positions.get(tuple(path[:end]))
            if pos is not None:
                return pos
        return self.start


def _to_python(node: yaml.Node, file: str, path: PathKey, positions: dict[PathKey, Position],
               depth: int, aliases: list[int]) -> Any:
    if depth > MAX_DEPTH:
        raise YamlSyntaxError(file, node.start_mark.line + 1, node.start_mark.column + 1,
                              f"nesting deeper than {MAX_DEPTH} levels")
    positions[path] = Position(file, node.start_mark.line + 1, node.start_mark.column + 1)
    constructor = yaml.SafeLoader("")
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)  # resolve merge keys (<<)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                raise YamlSyntaxError(file, key_node.start_mark.line + 1,
                                      key_node.start_mark.column + 1, "unhashable mapping key")
            child = (*path, str(key))
            result[key] = _to_python(value_node, file, child, positions, depth + 1, aliases)
            # a field is reported where its key is written (the value may start lines later)
            positions[child] = Position(file, key_node.start_mark.line + 1,
                                        key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(child, file, (*path, i), positions, depth + 1, aliases)
                for i, child in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)


class _CountingComposer(yaml.SafeLoader):
    """Counts alias uses while composing, to refuse alias bombs before expanding them."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_uses = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.alias_uses += 1
            if self.alias_uses > MAX_ALIASES:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise YamlSyntaxError(self.name, mark.line + 1, mark.column + 1,
                                      f"more than {MAX_ALIASES} aliases (YAML bomb?)")
        return super().compose_node(parent, index)


def _node_size(node: yaml.Node, seen: dict[int, int], depth: int = 0) -> int:
    """Expanded size of a node graph, memoised per node so shared aliases count every use."""
    key = id(node)
    if key in seen:
        return seen[key]
    if depth > MAX_DEPTH:
        return 10**12
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_node_size(k, seen, depth + 1) + _node_size(v, seen, depth + 1)
                       for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_node_size(c, seen, depth + 1) for c in node.value)
    else:
        size = 1
    seen[key] = size
    return size


MAX_EXPANDED_NODES = 2_000_000


def load_all(text: str, file: str) -> Iterator[Document]:
    """Parse every document of ``text``; syntax errors name file, line and column."""
    loader = _CountingComposer(text)
    loader.name = file
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if _node_size(node, {}) > MAX_EXPANDED_NODES:
                raise YamlSyntaxError(file, node.start_mark.line + 1, node.start_mark.column + 1,
                                      f"document expands to more than {MAX_EXPANDED_NODES} nodes"
                                      " (YAML bomb?)")
            positions: dict[PathKey, Position] = {}
            value = _to_python(node, file, (), positions, 0, [])
            start = Position(file, node.start_mark.line + 1, node.start_mark.column + 1)
            yield Document(value, start, positions)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        column = mark.column + 1 if mark else 1
        reason = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise YamlSyntaxError(file, line, column, reason) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(file, 1, 1, str(exc)) from None
    except RecursionError:
        raise YamlSyntaxError(file, 1, 1, "nesting too deep") from None
    finally:
        loader.dispose()


def load_one(text: str, file: str) -> Document | None:
    docs = list(load_all(text, file))
    if len(docs) > 1:
        raise YamlSyntaxError(file, docs[1].start.line, 1, "expected a single YAML document")
    return docs[0] if docs else None
