"""Releases: what an application's CI asks for, and how it is written into a declaration.

A release names images (``web=registry.example/web:1.4.2`` or ``web=...@sha256:...``) and,
for Helm environments, values (``image.tag=1.4.2``). This module parses those and edits the
text of an environment's files the way each format expects, keeping the file as a person
wrote it (comments, key order, quoting, indentation: ruamel.yaml round-trip):

- **kustomize**: the ``images:`` list of the overlay's kustomization, as ``kustomize edit set
  image`` does it: the entry whose ``name`` is NAME gets ``newName`` (when REF differs from
  NAME), and ``newTag`` *or* ``digest`` (setting one removes the other); a missing entry is
  appended.
- **helm**: ``--set a.b.c=VALUE`` sets that key of the values file (a new key is a string; an
  existing number or boolean keeps its type, as a person editing the file would); an image
  ``NAME`` sets ``tag`` (or ``digest``) next to a ``repository: NAME`` key, the convention of
  ``helm create`` charts, or a string value that is an image reference of NAME.
- **plain, jinja, jsonnet**: image references of NAME on lines that mention ``image`` are
  replaced in place (text, not a re-serialisation: the file is otherwise untouched).

Pure: text in, text out. Errors are ``ReleaseError`` naming the file and what was looked for.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.util import load_yaml_guess_indent

from orchestrator.errors import PermanentError

_NAME = re.compile(r"^[a-z0-9]+(?:[._/:-][a-z0-9]+)*$")  # an image repository (with registry)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_SET_PATH = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")
TRAILER = "Conveyor-Release"


class ReleaseError(PermanentError):
    """A release that cannot be written: bad input, or nothing in the declaration to edit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="InvalidRelease")


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """``NAME=REF[:TAG|@DIGEST]``: the image NAME (as the declaration names it) now runs REF.

    ``NAME=:TAG`` leaves REF as it is (``kept``): only the tag (or digest) changes."""

    name: str
    ref: str
    tag: str = ""
    digest: str = ""
    kept: bool = False  # REF not given: the declaration's own stays

    @property
    def reference(self) -> str:
        return f"{self.ref}@{self.digest}" if self.digest else f"{self.ref}:{self.tag}" \
            if self.tag else self.ref

    def __str__(self) -> str:
        return f"{self.name}={'' if self.kept else self.ref}" + (
            f"@{self.digest}" if self.digest else f":{self.tag}" if self.tag else "")


@dataclass(frozen=True, slots=True)
class SetSpec:
    """``PATH=VALUE``: a dotted key of a Helm values file."""

    path: tuple[str, ...]
    value: str

    def __str__(self) -> str:
        return f"{'.'.join(self.path)}={self.value}"


def split_reference(text: str) -> tuple[str, str, str]:
    """``registry:5000/web:1.2`` -> (``registry:5000/web``, ``1.2``, ``""``); a digest wins."""
    ref, _, digest = text.partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    tag = ""
    if colon > slash:
        ref, tag = ref[:colon], ref[colon + 1:]
    return ref, tag, digest


def parse_image(text: str) -> ImageSpec:
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ReleaseError(f"--image {text!r}: expected NAME=REF[:TAG|@DIGEST]")
    if not _NAME.match(name):
        raise ReleaseError(f"--image {text!r}: {name!r} is not an image name")
    ref, tag, digest = split_reference(value)
    kept = not ref
    ref = ref or name
    if not _NAME.match(ref):
        raise ReleaseError(f"--image {text!r}: {ref!r} is not an image reference")
    if tag and not _TAG.match(tag):
        raise ReleaseError(f"--image {text!r}: {tag!r} is not a valid tag")
    if digest and not _DIGEST.match(digest):
        raise ReleaseError(f"--image {text!r}: the digest must be sha256:<64 hex digits>")
    if not tag and not digest:
        raise ReleaseError(f"--image {text!r}: name a tag (:TAG) or a digest (@sha256:...); "
                           "a release without one would float")
    return ImageSpec(name, ref, "" if digest else tag, digest, kept)


def parse_set(text: str) -> SetSpec:
    path, sep, value = text.partition("=")
    path = path.strip()
    if not sep or not _SET_PATH.match(path):
        raise ReleaseError(f"--set {text!r}: expected PATH=VALUE with a dotted PATH "
                           "(letters, digits, '-', '_')")
    if "\n" in value:
        raise ReleaseError(f"--set {path}: the value must be one line")
    return SetSpec(tuple(path.split(".")), value)


def trailer(images: Sequence[ImageSpec], sets: Sequence[SetSpec]) -> str:
    """``Conveyor-Release: web=registry/web:1.2, image.tag=1.2``: one line, machine-readable."""
    return f"{TRAILER}: " + ", ".join([*map(str, images), *map(str, sets)])


def parse_trailer(message: str) -> list[str]:
    """The items of a commit message's ``Conveyor-Release`` trailer (none: [])."""
    for line in message.splitlines():
        if line.startswith(f"{TRAILER}: "):
            return [p.strip() for p in line.split(": ", 1)[1].split(",") if p.strip()]
    return []


# --------------------------------------------------------------------------- round-trip YAML


def _guess_mapping_indent(text: str) -> int:
    """The indentation step of nested mappings (ruamel's guess covers sequences only)."""
    previous: int | None = None
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith(("#", "-")):
            previous = None if stripped.startswith("-") else previous
            continue
        indent = len(line) - len(stripped)
        if previous is not None and indent > previous:
            return indent - previous
        previous = indent if stripped.rstrip().endswith(":") else None
    return 2


def _yaml_for(text: str) -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line the author kept on one
    mapping = _guess_mapping_indent(text)
    sequence, offset = mapping, 0
    if re.search(r"^\s*- ", text, re.MULTILINE):
        try:
            _, guessed, block = load_yaml_guess_indent(text)
        except YAMLError:
            guessed, block = None, None
        if guessed is not None and block is not None:
            sequence, offset = int(guessed), int(block)
    yaml.indent(mapping=mapping, sequence=max(sequence, offset + 2), offset=offset)
    return yaml


def _load(text: str, file: str) -> tuple[YAML, Any]:
    yaml = _yaml_for(text)
    try:
        return yaml, yaml.load(text)
    except YAMLError as exc:
        raise ReleaseError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _dump(yaml: YAML, data: Any) -> str:
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def set_kustomize_images(text: str, images: Sequence[ImageSpec], file: str) -> str:
    """The kustomization ``text`` with each image set like ``kustomize edit set image``."""
    yaml, data = _load(text, file)
    if not isinstance(data, CommentedMap):
        raise ReleaseError(f"{file}: a kustomization must be a mapping")
    entries = data.get("images")
    if entries is None:
        entries = data["images"] = CommentedSeq()
    if not isinstance(entries, list):
        raise ReleaseError(f"{file}: images must be a list")
    for image in images:
        entry: CommentedMap | None = next((e for e in entries if isinstance(e, CommentedMap)
                                           and e.get("name") == image.name), None)
        if entry is None:
            entry = CommentedMap(name=image.name)
            entries.append(entry)
        if image.kept:
            pass  # NAME=:TAG: newName stays whatever the overlay says
        elif image.ref != image.name:
            entry["newName"] = image.ref
        elif "newName" in entry:
            del entry["newName"]
        if image.digest:
            entry["digest"] = image.digest
            entry.pop("newTag", None)
        else:
            entry["newTag"] = image.tag
            entry.pop("digest", None)
    return _dump(yaml, data)


def kustomize_images(text: str, file: str) -> list[ImageSpec]:
    """The images a kustomization sets (what an environment runs, for promotion)."""
    _, data = _load(text, file)
    out: list[ImageSpec] = []
    entries = data.get("images") if isinstance(data, Mapping) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            name = str(entry["name"])
            tag, digest = str(entry.get("newTag") or ""), str(entry.get("digest") or "")
            if tag or digest:
                out.append(ImageSpec(name, str(entry.get("newName") or name),
                                     "" if digest else tag, digest))
    return out


def _typed(existing: Any, value: str) -> Any:
    """An existing number or boolean keeps its type; everything else is a string."""
    if isinstance(existing, bool):
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(existing, int):
        if re.fullmatch(r"-?\d+", value):
            return int(value)
    elif isinstance(existing, float) and re.fullmatch(r"-?\d+(?:\.\d+)?", value):
        return float(value)
    return value


def _set_image_in_values(node: Any, image: ImageSpec) -> int:
    """Set ``image`` wherever the values name it; returns how many places changed."""
    found = 0
    if isinstance(node, CommentedMap):
        if node.get("repository") in (image.name, image.ref) and (
                "tag" in node or "digest" in node):
            if not image.kept and image.ref != node["repository"]:
                node["repository"] = image.ref
            if image.digest:
                node["digest"] = image.digest
                if "tag" in node:
                    node["tag"] = ""
            else:
                node["tag"] = image.tag
                node.pop("digest", None)
            found += 1
        for key, value in list(node.items()):
            if isinstance(value, str) and _image_name(value) == image.name:
                node[key] = image.reference
                found += 1
            else:
                found += _set_image_in_values(value, image)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, str) and _image_name(value) == image.name:
                node[i] = image.reference
                found += 1
            else:
                found += _set_image_in_values(value, image)
    return found


def set_values(text: str, sets: Sequence[SetSpec], images: Sequence[ImageSpec],
               file: str) -> str:
    """The Helm values ``text`` with each ``--set`` key and image applied."""
    yaml, data = _load(text, file)
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise ReleaseError(f"{file}: a values file must be a mapping")
    for spec in sets:
        node = data
        for i, key in enumerate(spec.path[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = CommentedMap()
            if not isinstance(child, CommentedMap):
                raise ReleaseError(f"{file}: {'.'.join(spec.path[:i + 1])} is not a mapping, "
                                   f"so {spec} cannot be set")
            node = child
        last = spec.path[-1]
        node[last] = _typed(node.get(last), spec.value)
    for image in images:
        if not _set_image_in_values(data, image):
            raise ReleaseError(f"{file}: no image {image.name!r} (a 'repository: "
                               f"{image.name}' with a tag, or an image reference); use --set")
    return _dump(yaml, data)


def values_images(text: str, file: str) -> list[ImageSpec]:
    """Images a values file pins: ``repository`` + ``tag``/``digest`` pairs."""
    _, data = _load(text, file)
    out: list[ImageSpec] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            repo, tag, digest = node.get("repository"), node.get("tag"), node.get("digest")
            if isinstance(repo, str) and (tag or digest):
                out.append(ImageSpec(repo, repo, "" if digest else str(tag or ""),
                                     str(digest or "")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return out


# --------------------------------------------------------------------------- plain text


def _image_name(value: str) -> str | None:
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        return None
    ref, tag, digest = split_reference(value)
    if not (tag or digest) or not _NAME.match(ref):
        return None
    return ref


def _reference_pattern(name: str) -> re.Pattern[str]:
    # a reference has a tag or a digest: a bare name is a container name, a label...
    return re.compile(r"(?<![\w./-])" + re.escape(name)
                      + r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(?:@sha256:[0-9a-f]{64})?"
                      r"|@sha256:[0-9a-f]{64})(?![\w./:@-])")


def replace_image_refs(text: str, image: ImageSpec) -> tuple[str, int]:
    """Image references of ``image.name`` on lines mentioning ``image``, replaced in place."""
    pattern = _reference_pattern(image.name)
    count = 0
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if "image" not in line.lower():
            continue
        new, n = pattern.subn(image.reference, line)
        lines[i], count = new, count + n
    return "".join(lines), count


def text_images(text: str) -> list[ImageSpec]:
    """``image: repo:tag`` references in a manifest or jsonnet file (for promotion)."""
    out: list[ImageSpec] = []
    for match in re.finditer(r"image['\"]?\s*[:=]\s*['\"]?([^\s'\",}]+)", text):
        ref, tag, digest = split_reference(match.group(1))
        if (tag or digest) and _NAME.match(ref):
            out.append(ImageSpec(ref, ref, "" if digest else tag, digest))
    return out


@dataclass(frozen=True, slots=True)
class FileEdit:
    """A file of the environment and its new text."""

    path: str
    text: str


def edit_text_files(files: Mapping[str, str], images: Sequence[ImageSpec]) -> list[FileEdit]:
    """Plain/jinja/jsonnet files: each image replaced where it is referenced; every image
    must be found somewhere."""
    edited = dict(files)
    for image in images:
        total = 0
        for path, text in edited.items():
            new, n = replace_image_refs(text, image)
            edited[path], total = new, total + n
        if not total:
            raise ReleaseError(f"no reference to image {image.name!r} in "
                               f"{', '.join(sorted(files)) or 'the environment'}")
    return [FileEdit(p, t) for p, t in sorted(edited.items()) if t != files[p]]


def merge_images(current: Iterable[ImageSpec], wanted: Iterable[ImageSpec]) -> list[ImageSpec]:
    """``wanted`` that differ from ``current`` (by name): what a promotion must change."""
    have = {i.name: i for i in current}
    return [i for i in wanted if have.get(i.name) != i]
