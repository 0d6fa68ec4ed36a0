"""Environment generators: many environments declared once, like Argo CD ApplicationSets.

A fleet (clusters x apps x tenants) is not written out by hand. ``generators:`` in conveyor.yaml
lists generators, each producing *parameter sets*, and a ``template`` that turns one parameter set
into one environment block, exactly as if it had been written under ``environments:``::

    generators:
      - name: apps
        directories:                      # one parameter set per matching directory
          - path: envs/*
          - path: envs/legacy
            exclude: true
        template:
          name: "{{path.basename}}"
          path: "{{path}}"
          target: {git: {branch: "deploy/{{path.basename}}"}}
      - list:
          elements: [{cluster: eu, url: "https://eu.example"}, {cluster: us}]
        template: {name: "web-{{cluster}}", path: apps/web}
      - matrix:                           # the product of two generators, parameters merged
          generators:
            - list: {elements: [{cluster: eu}, {cluster: us}]}
            - directories: [{path: apps/*}]
        template: {name: "{{cluster}}-{{path.basename}}", path: "{{path}}"}

Placeholders are Argo CD's default (fasttemplate) syntax: ``{{path}}``, ``{{path.basename}}``,
``{{path.basenameNormalized}}``, ``{{path[N]}}`` for directories and ``{{key}}`` / ``{{a.b}}`` for
list elements. A placeholder with no value is an error naming the template field, never an empty
string. Pure: the repository's directory listing at the commit comes in as a value, so every reader
of the same commit generates the same environments.

This module parses ``generators:`` and expands templates; what one kind reads is beside it:
``generator_dirs.py`` (which directories a ``directories`` rule selects) and
``generator_pulls.py`` (an open pull request, for ``pullRequests``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.generator_dirs import DirectoryRule, dir_params, match_directories, matches
from orchestrator.domain.generator_pulls import PullRequest, pr_params
from orchestrator.domain.yamlpos import Document
from orchestrator.errors import ConfigError

ON_REMOVE = ("orphan", "prune")
_PLACEHOLDER = re.compile(
    r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)\s*\}\}")
_KINDS = ("directories", "list", "matrix", "pullRequests")
_KEYS = ("name", "template", "onRemove", *_KINDS)

Params = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Generator:
    """One parsed generator. ``where`` is the YAML path of its block (for errors)."""

    kind: str
    where: tuple[str | int, ...]
    name: str = ""
    directories: tuple[DirectoryRule, ...] = ()
    elements: tuple[Mapping[str, Any], ...] = ()
    children: tuple[Generator, ...] = ()
    template: Mapping[str, Any] = field(default_factory=dict)
    on_remove: str = "orphan"
    labels: tuple[str, ...] = ()  # pullRequests: only pull requests carrying all of these
    ttl: float | None = None  # pullRequests: seconds since a pull request's last update

    @property
    def reads_pulls(self) -> bool:
        """Whether its output depends on the forge's open pull requests."""
        return self.kind == "pullRequests" or any(c.reads_pulls for c in self.children)

    @property
    def reads_tree(self) -> bool:
        """Whether its output depends on the repository's directories (not only on the file)."""
        return self.kind == "directories" or any(c.reads_tree for c in self.children)

    def patterns(self) -> tuple[str, ...]:
        """The directory globs it reads, for deciding which commits can change its output."""
        own = tuple(r.path for r in self.directories)
        return own + tuple(p for c in self.children for p in c.patterns())


@dataclass(frozen=True, slots=True)
class Generated:
    """One environment block a generator produced, ready for the ``environments:`` checks."""

    name: str
    raw: Mapping[str, Any]
    generator: str
    on_remove: str
    where: tuple[str | int, ...]


def _err(doc: Document, message: str, path: Sequence[str | int], file: str) -> ConfigError:
    dotted = ".".join(str(p) for p in path)
    return ConfigError(message, file=file, line=doc.where(*path).line, field=dotted or None)


def _glob_ok(pattern: str) -> bool:
    return bool(pattern) and not pattern.startswith("/") and ".." not in pattern.split("/")


def _parse_one(doc: Document, raw: Any, where: tuple[str | int, ...], file: str,
               nested: bool) -> Generator:
    if not isinstance(raw, dict):
        raise _err(doc, "must be a mapping with one of directories, list, matrix", where, file)
    allowed = _KINDS if nested else _KEYS
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise _err(doc, f"unknown key {unknown[0]!r} (expected one of {', '.join(allowed)})",
                   (*where, unknown[0]), file)
    kinds = [k for k in _KINDS if k in raw]
    if len(kinds) != 1:
        raise _err(doc, "needs exactly one of directories, list, matrix", where, file)
    kind = kinds[0]
    body = raw[kind]
    at = (*where, kind)
    rules: list[DirectoryRule] = []
    elements: list[Mapping[str, Any]] = []
    children: list[Generator] = []
    if kind == "directories":
        if not isinstance(body, list) or not body:
            raise _err(doc, "must be a list like [{path: envs/*}]", at, file)
        for i, item in enumerate(body):
            if not isinstance(item, dict) or set(item) - {"path", "exclude"} \
                    or not isinstance(item.get("path"), str):
                raise _err(doc, "each entry is {path: GLOB, exclude: true|false}", (*at, i), file)
            path = str(item["path"]).strip().strip("/")
            if not _glob_ok(path):
                raise _err(doc, f"{item['path']!r} points outside the repository",
                           (*at, i, "path"), file)
            if not isinstance(item.get("exclude", False), bool):
                raise _err(doc, "must be true or false", (*at, i, "exclude"), file)
            rules.append(DirectoryRule(path, bool(item.get("exclude", False))))
        if all(r.exclude for r in rules):
            raise _err(doc, "needs at least one entry that is not an exclude", at, file)
    elif kind == "list":
        if not isinstance(body, dict) or set(body) != {"elements"} \
                or not isinstance(body["elements"], list):
            raise _err(doc, "must be {elements: [ {key: value}, ... ]}", at, file)
        for i, item in enumerate(body["elements"]):
            if not isinstance(item, dict):
                raise _err(doc, "each element is a mapping of parameters", (*at, "elements", i),
                           file)
            elements.append({str(k): v for k, v in item.items()})
    elif kind == "pullRequests":
        if body is None:
            body = {}
        if not isinstance(body, dict) or set(body) - {"labels", "ttl"}:
            raise _err(doc, "must be {labels: [...], ttl: 72h} (both optional)", at, file)
        raw_labels = body.get("labels") or []
        if not isinstance(raw_labels, list) or not all(isinstance(x, str) for x in raw_labels):
            raise _err(doc, "must be a list of label names", (*at, "labels"), file)
        pr_labels = tuple(raw_labels)
        pr_ttl = None
        if body.get("ttl") is not None:
            try:
                pr_ttl = _duration(body["ttl"])
            except ValueError as exc:
                raise _err(doc, str(exc), (*at, "ttl"), file) from None
        if nested:
            return Generator(kind, where, labels=pr_labels, ttl=pr_ttl)
        return _top(doc, raw, where, file, kind, labels=pr_labels, ttl=pr_ttl)
    else:
        if not isinstance(body, dict) or set(body) != {"generators"} \
                or not isinstance(body["generators"], list) or len(body["generators"]) != 2:
            raise _err(doc, "must be {generators: [A, B]} with exactly two generators (as in "
                       "Argo CD)", at, file)
        for i, child in enumerate(body["generators"]):
            parsed = _parse_one(doc, child, (*at, "generators", i), file, nested=True)
            if parsed.kind == "matrix":
                raise _err(doc, "a matrix may not nest another matrix",
                           (*at, "generators", i), file)
            children.append(parsed)
    if nested:
        return Generator(kind, where, directories=tuple(rules), elements=tuple(elements),
                         children=tuple(children))
    return _top(doc, raw, where, file, kind, directories=tuple(rules),
                elements=tuple(elements), children=tuple(children))


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a duration like 72h or 30m")
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*", value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use 30m, 72h, 7d)")
    unit = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[match.group(2) or "s"]
    return float(match.group(1)) * unit


def _top(doc: Document, raw: dict[str, Any], where: tuple[str | int, ...], file: str,
         kind: str, **parts: Any) -> Generator:
    """A top-level generator: its parts plus name, template and removal policy."""
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise _err(doc, "must be a string", (*where, "name"), file)
    template = raw.get("template")
    if not isinstance(template, dict) or "name" not in template:
        raise _err(doc, "needs a 'template' mapping with at least 'name' (and usually 'path')",
                   where, file)
    on_remove = raw.get("onRemove", "orphan")
    if on_remove not in ON_REMOVE:
        raise _err(doc, f"must be one of {', '.join(ON_REMOVE)}", (*where, "onRemove"), file)
    return Generator(kind, where, name=name or f"generator-{where[-1]}", template=template,
                     on_remove=str(on_remove), **parts)


def parse_generators(doc: Document, raw: Any, file: str) -> tuple[Generator, ...]:
    """``generators:`` -> parsed generators, or ConfigError naming file, line and field."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _err(doc, "must be a list of generators", ("generators",), file)
    parsed = tuple(_parse_one(doc, item, ("generators", i), file, nested=False)
                   for i, item in enumerate(raw))
    names = [g.name for g in parsed]
    for name in names:
        if names.count(name) > 1:
            raise _err(doc, f"two generators are named {name!r}", ("generators",), file)
    return parsed


def relevant_dirs(generators: Sequence[Generator], dirs: Sequence[str]) -> tuple[str, ...]:
    """The directories any generator's globs match (includes and excludes): all a reader needs
    to expand the generators again, so only these travel with the config."""
    patterns = [p for g in generators for p in g.patterns()]
    return tuple(sorted(d for d in set(dirs) if any(matches(p, d) for p in patterns)))


def touches(generators: Sequence[Generator], changed: Sequence[str]) -> bool:
    """Whether a commit changing these paths may add or remove a generated directory: some
    ancestor directory of a changed path matches a generator's glob."""
    patterns = [p for g in generators for p in g.patterns()]
    for path in changed:
        parts = path.split("/")[:-1]
        for end in range(1, len(parts) + 1):
            if any(matches(p, "/".join(parts[:end])) for p in patterns):
                return True
    return False


def wanted_pulls(generators: Sequence[Generator], pulls: Sequence[PullRequest],
                 now: float) -> tuple[PullRequest, ...]:
    """The pull requests some generator selects (labels, ttl), in number order. Run by the
    watcher, which knows the time; readers expand from its answer, so all agree."""
    def selects(gen: Generator, pr: PullRequest) -> bool:
        if gen.kind == "pullRequests":
            return set(gen.labels) <= set(pr.labels) and (
                gen.ttl is None or now - pr.updated_at <= gen.ttl)
        return any(selects(c, pr) for c in gen.children)
    return tuple(sorted((pr for pr in pulls if any(selects(g, pr) for g in generators)),
                        key=lambda pr: pr.number))


def _params(gen: Generator, dirs: Sequence[str],
            pulls: Sequence[PullRequest]) -> Iterator[dict[str, Any]]:
    if gen.kind == "directories":
        for path in match_directories(gen.directories, dirs):
            yield dir_params(path)
    elif gen.kind == "list":
        for element in gen.elements:
            yield dict(element)
    elif gen.kind == "pullRequests":
        for pr in pulls:
            if set(gen.labels) <= set(pr.labels):
                yield pr_params(pr)
    else:
        first, second = gen.children
        for a in _params(first, dirs, pulls):
            for b in _params(second, dirs, pulls):
                yield {**a, **b}


def _lookup(params: Mapping[str, Any], expr: str) -> Any:
    value: Any = params
    for token in re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\[\d+\]", expr):
        if token.startswith("["):
            segments = value.get("segments") if isinstance(value, dict) else value
            index = int(token[1:-1])
            if not isinstance(segments, list) or index >= len(segments):
                raise KeyError(expr)
            value = segments[index]
        elif isinstance(value, Mapping) and token in value:
            value = value[token]
        else:
            raise KeyError(expr)
    if isinstance(value, Mapping) and "" in value:
        value = value[""]
    if isinstance(value, Mapping | list):
        raise KeyError(expr)
    return value


def _fill(value: Any, params: Mapping[str, Any], at: tuple[str | int, ...],
          missing: list[tuple[tuple[str | int, ...], str]]) -> Any:
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            try:
                return str(_lookup(params, match.group(1)))
            except KeyError:
                missing.append((at, match.group(1)))
                return ""
        return _PLACEHOLDER.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: _fill(v, params, (*at, str(k)), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, params, (*at, i), missing) for i, v in enumerate(value)]
    return value


def expand(doc: Document, generators: Sequence[Generator], dirs: Sequence[str],
           file: str, pulls: Sequence[PullRequest] = ()) -> list[Generated]:
    """Every environment block the generators produce for a tree with these directories and
    these open pull requests. A pull request's environment follows its head branch: its
    ``source`` is ``pr-<number>`` (the primary repository on that branch) unless the template
    names one."""
    out: list[Generated] = []
    for gen in generators:
        for params in _params(gen, dirs, pulls):
            source = params.pop("_source", None)
            missing: list[tuple[tuple[str | int, ...], str]] = []
            where = (*gen.where, "template")
            raw = _fill(gen.template, params, where, missing)
            if missing:
                at, expr = missing[0]
                raise _err(doc, f"placeholder {{{{{expr}}}}} has no value in generator "
                           f"{gen.name!r} (parameters: {', '.join(sorted(params))})", at, file)
            name = str(raw.pop("name"))
            if source is not None:
                raw.setdefault("source", source)
            out.append(Generated(name, raw, gen.name, gen.on_remove, where))
    return out
