"""Built-in rules for the custom resources most clusters run, one module per project.

Each module reads the status API its project documents (the doc string names it) and follows
Argo CD's shipped Lua check for the kind where one exists, so a team moving from Argo CD sees the
same verdicts without carrying scripts over. ``RULES`` maps ``(group, kind)`` to a check,
``GROUP_RULES`` a whole API group, ``SUFFIX_RULES`` every group ending in a suffix (Argo's
``*.crossplane.io/*`` wildcard).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.health.crs import (
    argo,
    certmanager,
    cloud,
    crossplane,
    external_secrets,
    flux,
    istio,
    keda,
    knative,
    prometheus,
    sealed_secrets,
    strimzi,
)
from orchestrator.domain.health.crs.common import Check

Rule = tuple[str, Check]
_PROJECTS = (argo, certmanager, cloud, crossplane, external_secrets, flux, istio, keda, knative,
             prometheus, sealed_secrets, strimzi)


def _index(table: str) -> dict[Any, Rule]:
    """Every project's ``table`` (KINDS, GROUPS or SUFFIXES), each check named by project;
    built once at import, kept read-only below."""
    found: dict[Any, Rule] = {}
    for module in _PROJECTS:
        for key, check in getattr(module, table, {}).items():
            found[key] = (f"built-in:{module.PROJECT}", check)
    return found


RULES: Mapping[tuple[str, str], Rule] = MappingProxyType(_index("KINDS"))
GROUP_RULES: Mapping[str, Rule] = MappingProxyType(_index("GROUPS"))
SUFFIX_RULES: Mapping[str, Rule] = MappingProxyType(_index("SUFFIXES"))


def rule_for(group: str, kind: str) -> Rule | None:
    """The built-in custom-resource rule for ``group``/``kind``, with its name, or None."""
    found = RULES.get((group, kind)) or GROUP_RULES.get(group)
    if found is not None:
        return found
    for suffix, rule in SUFFIX_RULES.items():
        if group.endswith(suffix):
            return rule
    return None
