"""Built-in rules for the custom resources most clusters run, one module per project.

Each module reads the status API its project documents (the doc string names it) and follows
Argo CD's shipped Lua check for the kind where one exists, so a team moving from Argo CD sees the
same verdicts without carrying scripts over. ``RULES`` maps ``(group, kind)`` to a check,
``GROUP_RULES`` a whole API group, ``SUFFIX_RULES`` every group ending in a suffix (Argo's
``*.crossplane.io/*`` wildcard).
"""

from __future__ import annotations

from orchestrator.domain.health.crs import (
    argo,
    certmanager,
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

RULES: dict[tuple[str, str], tuple[str, Check]] = {}
GROUP_RULES: dict[str, tuple[str, Check]] = {}
SUFFIX_RULES: dict[str, tuple[str, Check]] = {}

for _module in (argo, certmanager, crossplane, external_secrets, flux, istio, keda, knative,
                prometheus, sealed_secrets, strimzi):
    _name = f"built-in:{_module.PROJECT}"
    for _key, _check in getattr(_module, "KINDS", {}).items():
        RULES[_key] = (_name, _check)
    for _group, _check in getattr(_module, "GROUPS", {}).items():
        GROUP_RULES[_group] = (_name, _check)
    for _suffix, _check in getattr(_module, "SUFFIXES", {}).items():
        SUFFIX_RULES[_suffix] = (_name, _check)


def rule_for(group: str, kind: str) -> tuple[str, Check] | None:
    """The built-in custom-resource rule for ``group``/``kind``, with its name, or None."""
    found = RULES.get((group, kind)) or GROUP_RULES.get(group)
    if found is not None:
        return found
    for suffix, rule in SUFFIX_RULES.items():
        if group.endswith(suffix):
            return rule
    return None
