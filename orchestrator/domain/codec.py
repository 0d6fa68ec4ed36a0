"""The one codec between events' ``data`` and the payload classes, with upcasting.

``encode(payload)`` is the ``data`` of a new event; ``decode(event)`` the typed payload of any
event in the log, whatever version wrote it. The version travels in the CloudEvents
``dataschema`` attribute, ``urn:conveyor:payload:<type>:v<N>`` (``schema_for``); an event
without one was written before payloads were typed and is version 1. Reading an old version
runs its upcasters, in order, up to ``CURRENT_VERSION``: old events are never rewritten.

To change a payload: add or rename the field in ``payloads.py``, raise ``CURRENT_VERSION``,
and register an upcaster ``(from_version, function)`` here that turns the previous version's
data into the new shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeVar, cast

from orchestrator.domain import events as ev
from orchestrator.domain.events import SCHEMA_PREFIX, Event, schema_for

__all__ = ["build", "carry", "decode", "decode_as", "decode_data", "encode", "schema_for",
           "upcast", "version_of"]
from orchestrator.domain.payloads import BY_TYPE, CLASSES, CURRENT_VERSION, Payload, Unknown

Data = dict[str, Any]
P = TypeVar("P", bound=Payload)
Upcaster = Callable[[str, Data], Data]


def version_of(event: Event) -> int:
    """The payload version an event was written with (1: before ``dataschema``)."""
    schema = event.dataschema
    if not schema.startswith(SCHEMA_PREFIX):
        return 1
    _, _, tail = schema.rpartition(":v")
    return int(tail) if tail.isdigit() else 1


# -- upcasters: version N's data -> version N+1's ---------------------------------------------

def _v1_dead_code(event_type: str, data: Data) -> Data:
    """Version 1 dead letters had no ``code``: they were either not events or exhausted."""
    if ev.outcome_of(event_type) != "dead" or "code" in data:
        return data
    return {**data, "code": "Malformed" if data.get("malformed") else "Exhausted"}


def _v1_unhealthy_objects(event_type: str, data: Data) -> Data:
    """Version 1 ``apply.failed`` of an unhealthy rollout listed the objects in ``objects``,
    over the bundle's object count that apply outcomes pass on."""
    if event_type != ev.APPLY_FAILED or not isinstance(data.get("objects"), list):
        return data
    out = {k: v for k, v in data.items() if k != "objects"}
    return {**out, "unhealthy_objects": data["objects"]}


UPCASTERS: Final[Mapping[int, tuple[Upcaster, ...]]] = MappingProxyType({
    1: (_v1_dead_code, _v1_unhealthy_objects),
})


def upcast(event_type: str, version: int, data: Mapping[str, Any]) -> Data:
    out = dict(data)
    for v in range(version, CURRENT_VERSION):
        for step in UPCASTERS.get(v, ()):
            out = step(event_type, out)
    return out


# -- fields ---------------------------------------------------------------------------------

def data_key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key", f.name))


def payload_fields(cls: type[Payload]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.name != "extra"]


def _is_tuple(f: dataclasses.Field[Any]) -> bool:
    return str(f.type).startswith("tuple")


def _write(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_write(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _write(v) for k, v in value.items()}
    return value


# -- the codec ----------------------------------------------------------------------------

class _Reader:
    """How one payload class is read from ``data``, worked out once: each data key's slot
    (and whether a JSON list becomes a tuple), the defaults, and the slots' setters. Reading
    fills the slots of a new instance directly: the same object ``cls(**fields)`` makes (the
    classes are plain frozen records with no ``__post_init__``), in half the time, and every
    event of a replay is decoded."""

    __slots__ = ("_cls", "_defaults", "_extra", "_factories", "_keys", "_set")

    def __init__(self, cls: type[Payload]) -> None:
        fields = dataclasses.fields(cls)
        self._cls = cls
        self._keys = MappingProxyType({data_key(f): (i, _is_tuple(f))
                                       for i, f in enumerate(fields) if f.name != "extra"})
        self._extra = next(i for i, f in enumerate(fields) if f.name == "extra")
        self._defaults = tuple(None if f.default is dataclasses.MISSING else f.default
                               for f in fields)
        self._factories = tuple((i, f.default_factory) for i, f in enumerate(fields)
                                if f.default_factory is not dataclasses.MISSING
                                and f.name != "extra")
        self._set = tuple(getattr(cls, f.name).__set__ for f in fields)

    def read(self, raw: Mapping[str, Any]) -> Payload:
        values = list(self._defaults)
        for i, make in self._factories:
            values[i] = make()
        keys = self._keys
        extra: Data = {}
        for k, v in raw.items():
            known = keys.get(k)
            if known is None:
                extra[k] = v
            else:
                values[known[0]] = tuple(v) if known[1] and isinstance(v, list) else v
        values[self._extra] = extra
        new: Payload = object.__new__(self._cls)
        for put, value in zip(self._set, values, strict=True):
            put(new, value)
        return new


READERS: Final[Mapping[type[Payload], _Reader]] = MappingProxyType(
    {cls: _Reader(cls) for cls in (*CLASSES, Unknown)})
"""Each payload class's reader (an event type no class names reads as ``Unknown``)."""


def decode_data(event_type: str, data: Mapping[str, Any], version: int = CURRENT_VERSION,
                ) -> Payload:
    raw = data if version >= CURRENT_VERSION else upcast(event_type, version, data)
    return _read(BY_TYPE.get(event_type, Unknown), raw)


def _read(cls: type[P], raw: Mapping[str, Any]) -> P:
    """``raw`` read as ``cls``: its reader, or for a base no event type names (``decode_as``
    asks for those, rarely) one made for the call."""
    reader = READERS.get(cls) or _Reader(cls)
    return cast(P, reader.read(raw))


def decode(event: Event) -> Payload:
    """The typed payload of ``event``, upcast from the version that wrote it."""
    return decode_data(event.type, event.data, version_of(event))


def decode_as(event: Event, cls: type[P]) -> P:
    """``decode(event)`` as ``cls``: the class of the event's type or one of its bases (as
    when reading the last event of a known type). An event of another type is read by
    ``cls``'s fields, its other keys in ``extra``."""
    found = decode(event)
    if isinstance(found, cls):
        return found
    version = version_of(event)
    return _read(cls, event.data if version >= CURRENT_VERSION
                 else upcast(event.type, version, event.data))


def carry(event: Event, keys: tuple[str, ...]) -> Data:
    """The data ``keys`` of ``event`` exactly as written (the keys it has, only), for an
    outcome that passes its input's fields on unchanged: what the input carried, byte for
    byte (none of the types passed on has an upcaster)."""
    return {k: event.data[k] for k in keys if k in event.data}


def build(cls: type[Payload], /, *, extra: Mapping[str, Any] | None = None,
          **given: Any) -> Data:
    """The ``data`` of a new ``cls`` event carrying exactly the fields ``given`` (by field
    name), then ``extra``'s keys. A name that is not a field of ``cls`` is a ``TypeError``
    here rather than a stray key in the log. Unlike ``encode``, fields not given are left out
    and a None given is written (null): what a writer that names its keys one by one wrote
    before payloads were typed, byte for byte."""
    payload = cls(**given)
    keys = {f.name: data_key(f) for f in payload_fields(cls)}
    out = {keys[name]: _write(getattr(payload, name)) for name in given}
    return {**out, **{k: v for k, v in (extra or {}).items() if k not in out}}


def encode(payload: Payload) -> Data:
    """The ``data`` of an event carrying ``payload``: every field that is set (None is left
    out), then the extra keys it was read with."""
    out: Data = {}
    for f in payload_fields(type(payload)):
        value = getattr(payload, f.name)
        if value is None or (f.name in ("retry_of", "original_id") and not value) or (
                f.name == "retry" and not value):
            continue
        out[data_key(f)] = _write(value)
    return {**out, **{k: v for k, v in payload.extra.items() if k not in out}}
