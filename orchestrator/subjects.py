"""Every NATS subject, stream, consumer and bucket name, built in one place.

Event subjects are ``conveyor.events.<env>.<stage>.<outcome>``: the environment is a subject
token, so a consumer that serves only some environments filters on the server, and the event
type maps one-to-one to the last two tokens. Events about no single environment use ``_``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

STREAM: Final = "CONVEYOR"
PREFIX: Final = "conveyor.events"
ALL_EVENTS: Final = f"{PREFIX}.>"
STATE_BUCKET: Final = "conveyor-state"
DELIVERY_BUCKET: Final = "conveyor-deliveries"
BUNDLE_BUCKET: Final = "conveyor-bundles"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_env_name(name: str) -> bool:
    """Environment names are NATS subject tokens: letters, digits, ``-`` and ``_``."""
    return bool(_TOKEN.match(name))


def event_subject(env: str, event_type: str) -> str:
    """``("dev", "conveyor.apply.failed")`` -> ``conveyor.events.dev.apply.failed``."""
    suffix = event_type.removeprefix("conveyor.")
    return f"{PREFIX}.{env}.{suffix}"


def filter_for(event_type_prefix: str, envs: Iterable[str] | None = None) -> list[str]:
    """Server-side filters for events of a type (or type prefix such as ``conveyor.apply``)."""
    suffix = "" if event_type_prefix in ("conveyor", "conveyor.") else \
        event_type_prefix.removeprefix("conveyor.").strip(".")
    tail = suffix if suffix.count(".") >= 1 else (f"{suffix}.>" if suffix else ">")
    env_list = list(envs) if envs else ["*"]
    return [f"{PREFIX}.{env}.{tail}" for env in env_list]


def consumer_name(service: str, envs: Iterable[str] | None = None) -> str:
    """Durable name: ``renderer`` for all environments, ``renderer--dev--prod`` for a subset."""
    env_list = sorted(set(envs or []))
    return service if not env_list else "--".join([service, *env_list])
