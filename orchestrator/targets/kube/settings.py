"""The ``kubernetes`` target's settings: ``target.kubernetes`` and ``sync`` of one environment.

::

    target:
      kubernetes:
        kubeconfig: ${PROD_KUBECONFIG}   # omitted: in-cluster service account (or $KUBECONFIG)
        context: prod                    # omitted: the kubeconfig's current-context
        namespace: shop                  # default namespace; omitted: the context's/pod's
        force: true                      # take over fields other managers own (default true)
        fieldManager: conveyor
        inventoryNamespace: conveyor     # where conveyor-inventory-<env> lives (default: namespace)
    sync:
      prune: true                        # delete objects that left the bundle (default false)
      selfHeal: true                     # re-apply when drift is detected (default false)
      wait: {timeout: 5m, interval: 2s}  # health wait between waves; ``wait: false`` skips it
      driftInterval: 3m

Defaults follow what Argo CD and Flux users expect: server-side apply *with* force (both tools
take ownership of the fields they apply, otherwise a ``kubectl edit`` makes the next sync and any
self-heal fail on a field-manager conflict), pruning and self-heal opt-in (Argo CD's automated
sync defaults), a five-minute health wait (Flux's default timeout), drift checked every three
minutes (Argo CD's reconciliation period). Values arrive already ``${VAR}``-expanded.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.config import parse_duration
from orchestrator.errors import PermanentError
from orchestrator.secrets import SecretScope

TARGET_KEYS = ("kubeconfig", "context", "namespace", "force", "fieldManager",
               "inventoryNamespace", "concurrency")
SYNC_KEYS = ("prune", "selfHeal", "wait", "driftInterval")
WAIT_KEYS = ("timeout", "interval")


@dataclass(frozen=True, slots=True)
class KubeSettings:
    env: str
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    """Default namespace of namespaced objects; None: the kubeconfig context's (or the pod's)."""
    force: bool = True
    field_manager: str = "conveyor"
    inventory_namespace: str | None = None
    concurrency: int = 16
    """Objects of one wave applied at once."""
    prune: bool = False
    self_heal: bool = False
    wait: bool = True
    wait_timeout: float = 300.0
    poll_interval: float = 2.0
    """How often objects that are not healthy yet are re-read (the API has no watch here)."""
    drift_interval: float = 180.0


def _invalid(env: str, where: str, message: str) -> PermanentError:
    return PermanentError(f"environment {env}: {where}: {message}", reason="InvalidConfig")


def _check_keys(env: str, where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise _invalid(env, where, f"unknown key {key!r}{more}")


def _bool(env: str, where: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(env, where, f"must be true or false, got {value!r}")
    return value


def _duration(env: str, where: str, value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _invalid(env, where, f"must be a duration (30s, 5m), got {value!r}")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise _invalid(env, where, str(exc)) from None
    if seconds <= 0:
        raise _invalid(env, where, "must be more than zero")
    return seconds


def _text(env: str, where: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _invalid(env, where, f"must be a string, got {value!r}")
    return value


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _namespace(env: str, where: str, value: Any) -> str | None:
    """A namespace is a DNS-1123 label: ``"."`` or ``"a/b"`` would change the API path."""
    text = _text(env, where, value)
    if text is not None and not _DNS_LABEL.match(text):
        raise _invalid(env, where, f"{text!r} is not a namespace name (lower-case letters, "
                       "digits and '-', at most 63, starting and ending alphanumeric)")
    return text


def kube_settings(env: str, target: Mapping[str, Any] | None,
                  sync: Mapping[str, Any] | None) -> KubeSettings:
    """Check and read the settings; ``PermanentError`` (InvalidConfig) names the bad field."""
    target = target or {}
    sync = sync or {}
    if not isinstance(target, Mapping) or not isinstance(sync, Mapping):
        raise _invalid(env, "target.kubernetes / sync", "must be mappings")
    _check_keys(env, "target.kubernetes", target, TARGET_KEYS)
    _check_keys(env, "sync", sync, SYNC_KEYS)
    wait_raw = sync.get("wait", True)
    if isinstance(wait_raw, bool):
        wait, wait_cfg = wait_raw, {}
    elif isinstance(wait_raw, Mapping):
        _check_keys(env, "sync.wait", wait_raw, WAIT_KEYS)
        wait, wait_cfg = True, dict(wait_raw)
    else:
        raise _invalid(env, "sync.wait", "must be false or a mapping such as {timeout: 5m}")
    concurrency = target.get("concurrency", 16)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise _invalid(env, "target.kubernetes.concurrency", "must be a whole number >= 1")
    return KubeSettings(
        env=env,
        kubeconfig=_text(env, "target.kubernetes.kubeconfig", target.get("kubeconfig")),
        context=_text(env, "target.kubernetes.context", target.get("context")),
        namespace=_namespace(env, "target.kubernetes.namespace", target.get("namespace")),
        force=_bool(env, "target.kubernetes.force", target.get("force"), True),
        field_manager=_text(env, "target.kubernetes.fieldManager",
                            target.get("fieldManager")) or "conveyor",
        inventory_namespace=_namespace(env, "target.kubernetes.inventoryNamespace",
                                       target.get("inventoryNamespace")),
        concurrency=concurrency,
        prune=_bool(env, "sync.prune", sync.get("prune"), False),
        self_heal=_bool(env, "sync.selfHeal", sync.get("selfHeal"), False),
        wait=wait,
        wait_timeout=_duration(env, "sync.wait.timeout", wait_cfg.get("timeout"), 300.0),
        poll_interval=_duration(env, "sync.wait.interval", wait_cfg.get("interval"), 2.0),
        drift_interval=_duration(env, "sync.driftInterval", sync.get("driftInterval"), 180.0),
    )


def expanded_target(env: str, raw: Mapping[str, Any] | None,
                    scope: SecretScope) -> dict[str, Any]:
    """``target.kubernetes`` as written, ``${VAR}`` expanded within ``scope``. A kubeconfig is a
    credential and, through exec plugins, a program: it must be a file under the operator's
    ``--secrets-dir`` (a committer names which one, never an arbitrary host file)."""
    target = dict(scope.expand_all(dict(raw or {})))
    if target.get("kubeconfig"):
        try:
            target["kubeconfig"] = str(scope.path(str(target["kubeconfig"]),
                                                  "target.kubernetes.kubeconfig"))
        except PermanentError as exc:
            raise _invalid(env, "target.kubernetes.kubeconfig", exc.message) from None
    return target
