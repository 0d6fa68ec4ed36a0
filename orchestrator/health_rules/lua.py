"""Argo CD health scripts in Lua, run in-process by ``lupa`` inside a sandbox.

The environment is Argo CD's (``util/lua/lua.go`` and ``oslib_safe.go``): the global ``obj``
holds the live object, the script returns ``{status = ..., message = ...}``; it has the base
library, ``table``, a safe ``os`` with only ``time`` and ``date`` (also as ``require("os")``) and
``require("json")`` (``decode``/``encode``, as gopher-json). Where Conveyor differs, it is to let
scripts that run in Argo CD run here unchanged and to fail safely where Argo CD would not:

- ``string`` and ``math`` are always there (Argo CD gives them to its own scripts and, with
  ``resource.customizations.useOpenLibs.<group_kind>``, to yours); ``useOpenLibs`` never opens
  ``io``, the rest of ``os``, ``debug``, ``package`` loading, ``load``/``dofile``, coroutines;
- Lua 5.1 spellings gopher-lua accepts (``table.getn``, ``unpack``, ``math.pow``) work on
  Lua 5.4, and ``tostring`` prints an integral float as gopher-lua does ("3", not "3.0");
  integral JSON numbers arrive as integers (``..`` of a computed float still shows "3.0");
- ``require("json")`` and every other value a script can reach are Lua values (the json
  functions are Lua closures): no Python object is ever in a script's hands;
- each call has a time limit (wall time, checked every 1,000 instructions, not swallowed by the
  script's own ``pcall``) and the runtime a memory cap; string patterns whose backtracking could
  outlast any limit inside one C call are refused (``sandbox.lua`` says how);
- a script that fails, times out, runs out of memory or returns something that is not a status
  gives Unknown with the reason, never an exception. An empty table is "no verdict", as in
  Argo CD (a status of "" counts for nothing there).

One ``LuaEngine`` owns one ``LuaRuntime`` (not thread-safe: calls are serialised by a lock); each
call gets a fresh environment, so scripts share no state.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lupa import lua54

from orchestrator.domain.health import Health, HealthStatus

DEFAULT_TIMEOUT = 1.0
"""Seconds per call: Argo CD's limit (``context.WithTimeout(..., 1*time.Second)``)."""
DEFAULT_MAX_MEMORY = 64 * 1024 * 1024
"""Bytes the whole runtime may hold (the objects of one call live only during that call)."""
PATTERN_LIMIT = 2e8
"""Worst-case steps a single pattern match may take, about a quarter of a second."""

COMPILED_KEPT = 256
"""Compiled scripts kept in the runtime (least recently used dropped)."""
INVALID = "Lua returned an invalid health status"
_VALID = frozenset(h.value for h in Health)


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A health script and where it came from (``source`` names it in messages)."""

    source: str
    text: str


def _deny(obj: object, name: object, is_setting: bool) -> object:
    raise AttributeError("health scripts cannot reach Python objects")


class LuaEngine:
    """Runs ``LuaScript``s against objects; see the module docstring for the environment."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT,
                 max_memory: int = DEFAULT_MAX_MEMORY) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._lua = lua54.LuaRuntime(register_eval=False, register_builtins=False,
                                     unpack_returned_tuples=True, attribute_filter=_deny,
                                     max_memory=max_memory)
        self.max_memory = max_memory
        code = resources.files(__package__).joinpath("sandbox.lua").read_text(encoding="utf-8")
        setup = self._lua.execute(f"return function(...) {code}\nend")
        self._run, self._forget = setup(self._json_decode, self._json_encode, PATTERN_LIMIT,
                                        time.monotonic)
        self._ids: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._serial = 0

    # -- json for scripts: values cross as Lua tables, never as Python objects ---------------

    def _json_decode(self, text: object) -> object:
        if not isinstance(text, str):
            raise ValueError("json.decode expects a string")
        return self._to_lua(json.loads(text))

    def _json_encode(self, value: object) -> str:
        return json.dumps(_from_lua(value), separators=(",", ":"))

    def _to_lua(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return self._lua.table_from({str(k): self._to_lua(v) for k, v in value.items()
                                         if v is not None})
        if isinstance(value, list | tuple):
            return self._lua.table_from([self._to_lua(v) for v in value])
        if isinstance(value, float) and value.is_integer():
            return int(value)  # JSON numbers are float64 in Argo CD: 3.0 prints as 3 there
        return value

    # -- running ------------------------------------------------------------------------------

    def _id(self, script: LuaScript) -> str:
        """The compiled chunk's id; the least recently used beyond ``COMPILED_KEPT`` are
        dropped, so scripts changing commit after commit do not fill the runtime."""
        key = (script.source, script.text)
        found = self._ids.get(key)
        if found is not None:
            self._ids.move_to_end(key)
            return found
        self._serial += 1
        found = self._ids[key] = f"{script.source}#{self._serial}"
        while len(self._ids) > COMPILED_KEPT:
            _, old = self._ids.popitem(last=False)
            self._forget(old)
        return found

    def run(self, script: LuaScript, obj: Mapping[str, Any]) -> HealthStatus | None:
        """The script's verdict on ``obj``; Unknown with the reason when the script fails."""
        with self._lock:
            try:
                ok, result = self._run(self._id(script), script.source, script.text,
                                       self._to_lua(obj), self.timeout)
            except lua54.LuaMemoryError:
                ok, result = False, "not enough memory"
            except lua54.LuaError as exc:
                ok, result = False, str(exc)
            finally:
                if self._lua.get_memory_used() > self.max_memory // 4:
                    self._lua.execute("collectgarbage('collect')")
            if not ok:
                reason = _text(result)
                if not reason.startswith(script.source):
                    reason = f"{script.source}: {reason}"
                return HealthStatus(Health.UNKNOWN, reason)
            return _verdict(result)


def _text(value: Any) -> str:
    if value is None:
        return "error"
    return value if isinstance(value, str) else str(value)


def _verdict(result: Any) -> HealthStatus | None:
    if lua54.lua_type(result) != "table":
        kind = "nil" if result is None else (lua54.lua_type(result) or type(result).__name__)
        return HealthStatus(Health.UNKNOWN, f"expect table output from Lua script, not {kind}")
    status, message = result["status"], result["message"]
    if status is None and message is None and next(iter(result.keys()), None) is None:
        return None
    if not isinstance(status, str) or status not in _VALID:
        return HealthStatus(Health.UNKNOWN, INVALID)
    if message is not None and not isinstance(message, str | int | float):
        return HealthStatus(Health.UNKNOWN, f"the health message must be a string, not "
                            f"{lua54.lua_type(message) or type(message).__name__}")
    return HealthStatus(Health(status), "" if message is None else _text(message))


def _from_lua(value: Any) -> Any:
    if lua54.lua_type(value) != "table":
        return value
    keys = list(value.keys())
    if keys and all(isinstance(k, int) for k in keys) and sorted(keys) == list(
            range(1, len(keys) + 1)):
        return [_from_lua(value[k]) for k in sorted(keys)]
    if not keys:
        return []  # as gopher-json: an empty table encodes as an array
    return {str(k): _from_lua(value[k]) for k in keys}
