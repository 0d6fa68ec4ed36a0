"""Schema reconciliation: the stream, KV buckets and object store, as the operator asked.

Every process reconciles at start-up, so this must be safe to run many times and at once:

- a resource that is missing is created (with the asked replicas, or 1);
- one that exists is *updated* through the stream API on its underlying stream (``CONVEYOR``,
  ``KV_<bucket>``, ``OBJ_<bucket>``), starting from the config the server reports and changing
  only the fields that were asked for and differ. nats-py's ``create_key_value`` /
  ``create_object_store`` re-send a whole default config instead (err 10058 once someone
  raised the replicas by hand), and a bare ``update_stream`` of a fresh config resets every
  field it does not name (``--retention-age`` used to drop the replicas to 1);
- nothing is ever deleted or re-created: the stream is the system of record.

``None`` in :class:`Schema` means "keep what exists": a process started without
``--replicas`` or ``--retention-*`` must not undo what another one configured.

The stream also carries the log's *epoch*, a random id written into its metadata when it is
created. A log that was wiped and re-created gets a new epoch; targets record the epoch they
were written under, which is how an applier tells a reset log from a target that is ahead.
A change the server refuses (more replicas than servers, a storage type that cannot change)
is a :class:`~orchestrator.errors.PermanentError` naming the resource and both values.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, NotFoundError

from orchestrator import subjects
from orchestrator.errors import PermanentError, TransientError

log = structlog.get_logger(__name__)

EPOCH_KEY = "conveyor_epoch"
# Publishes must finish inside the duplicate window for the server to drop a retried one.
DUPLICATE_WINDOW = 30 * 60.0
KV_BUCKETS = (subjects.STATE_BUCKET, subjects.DELIVERY_BUCKET, subjects.LEASE_BUCKET)
ERR_STREAM_EXISTS = 10058  # "stream name already in use with a different configuration"


@dataclass(frozen=True, slots=True)
class Retention:
    """Stream retention: 0 means unlimited (the default: the log is the system of record)."""

    max_age: float = 0.0
    max_bytes: int = -1


@dataclass(frozen=True, slots=True)
class Schema:
    """What the operator asked for. ``None``: keep what exists (create with the default)."""

    replicas: int | None = None
    retention: Retention | None = None


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What the schema is after reconciliation."""

    epoch: str
    replicas: int


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def obj_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def new_epoch() -> str:
    return secrets.token_hex(8)


def event_stream_config(schema: Schema, epoch: str) -> jsapi.StreamConfig:
    retention = schema.retention or Retention()
    return jsapi.StreamConfig(
        name=subjects.STREAM, subjects=[subjects.ALL_EVENTS],
        storage=jsapi.StorageType.FILE, retention=jsapi.RetentionPolicy.LIMITS,
        max_age=retention.max_age, max_bytes=retention.max_bytes,
        duplicate_window=DUPLICATE_WINDOW, allow_direct=True,
        num_replicas=schema.replicas or 1, metadata={EPOCH_KEY: epoch},
    )


async def reconcile(js: JetStreamContext, schema: Schema, *,
                    manage: bool = True) -> Reconciled:
    """Bring the stream, the KV buckets and the object store to ``schema``; the log's epoch.

    ``manage`` False (a service whose bus user may not create or update streams,
    ``nats_permissions``): only check that they exist (``TransientError`` reason
    ``SchemaMissing`` otherwise: the api or ``conveyor up`` creates them) and leave their
    config as it is."""
    replicas = schema.replicas
    stream = await _reconcile_stream(js, subjects.STREAM, schema,
                                     create=partial(_create_events, js, schema),
                                     manage=manage)
    epoch = (stream.metadata or {}).get(EPOCH_KEY, "")
    if not epoch and not manage:
        raise TransientError(f"{subjects.STREAM} has no epoch yet: the api (or `conveyor "
                             "up`) gives it one", reason="SchemaMissing")
    if not epoch:  # a stream from before epochs: give it one (nothing else changes)
        epoch = new_epoch()
        stream = await _update(js, stream, {"metadata": {**(stream.metadata or {}),
                                                         EPOCH_KEY: epoch}})
    for bucket in KV_BUCKETS:
        await _reconcile_stream(js, kv_stream(bucket), Schema(replicas),
                                create=partial(_create_kv, js, bucket, replicas or 1),
                                manage=manage)
    await _reconcile_stream(js, obj_stream(subjects.BUNDLE_BUCKET), Schema(replicas),
                            create=partial(_create_obj, js, subjects.BUNDLE_BUCKET,
                                           replicas or 1), manage=manage)
    return Reconciled(epoch=epoch, replicas=int(stream.num_replicas or 1))


async def _create_events(js: JetStreamContext, schema: Schema) -> None:
    await js.add_stream(event_stream_config(schema, new_epoch()))


async def _create_kv(js: JetStreamContext, bucket: str, replicas: int) -> None:
    await js.create_key_value(jsapi.KeyValueConfig(
        bucket=bucket, history=1, storage=jsapi.StorageType.FILE, replicas=replicas))


async def _create_obj(js: JetStreamContext, bucket: str, replicas: int) -> None:
    await js.create_object_store(bucket, config=jsapi.ObjectStoreConfig(
        storage=jsapi.StorageType.FILE, replicas=replicas))


def wanted_changes(current: jsapi.StreamConfig, schema: Schema) -> dict[str, Any]:
    """The fields of ``current`` that differ from what was asked (nothing else)."""
    wanted: dict[str, Any] = {}
    if schema.replicas is not None:
        wanted["num_replicas"] = schema.replicas
    if schema.retention is not None:
        wanted["max_age"] = schema.retention.max_age
        wanted["max_bytes"] = schema.retention.max_bytes
    return {k: v for k, v in wanted.items() if _normal(k, getattr(current, k)) != v}


def _normal(field: str, value: Any) -> Any:
    """The server reports unset limits as 0/None; compare them as Conveyor writes them."""
    if field == "max_age":
        return float(value or 0.0)
    if field == "max_bytes":
        return -1 if value in (None, 0) else int(value)
    if field == "num_replicas":
        return int(value or 1)
    return value


async def _reconcile_stream(js: JetStreamContext, name: str, schema: Schema, *,
                            create: Callable[[], Awaitable[Any]],
                            manage: bool = True) -> jsapi.StreamConfig:
    for _ in range(3):  # another process may create it between our look and our create
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            if not manage:
                raise TransientError(f"{name} does not exist yet: the api (or `conveyor up`) "
                                     "creates it", reason="SchemaMissing") from None
            try:
                await create()
            except APIError as exc:
                if exc.err_code == ERR_STREAM_EXISTS:
                    continue  # created concurrently: reconcile what is there now
                raise PermanentError(
                    f"cannot create {name} with {schema.replicas or 1} replica(s): "
                    f"{exc.description}", reason="SchemaMismatch") from exc
            log.info("schema.created", resource=name, replicas=schema.replicas or 1)
            continue  # read back what the server made of it
        config = info.config
        if config.storage not in (None, jsapi.StorageType.FILE):
            raise PermanentError(
                f"{name}: storage is {config.storage.value}, Conveyor needs file; this cannot "
                "be changed in place (back the data up and re-create the stream)",
                reason="SchemaMismatch")
        changes = wanted_changes(config, schema)
        if changes and not manage:
            log.warning("schema.not_managed", resource=name, wanted=sorted(changes),
                        hint="the api (or `conveyor up`) reconciles the schema")
            return config
        return await _update(js, config, changes) if changes else config
    raise PermanentError(f"{name}: could not be created or read back", reason="SchemaMismatch")


async def _update(js: JetStreamContext, config: jsapi.StreamConfig,
                  changes: dict[str, Any]) -> jsapi.StreamConfig:
    before = {k: getattr(config, k) for k in changes}
    try:
        info = await js.update_stream(replace(config, **changes))
    except APIError as exc:
        what = ", ".join(f"{k} is {before[k]!r}, asked for {changes[k]!r}" for k in changes)
        raise PermanentError(f"cannot update {config.name}: {what}: {exc.description}",
                             reason="SchemaMismatch") from exc
    log.info("schema.updated", resource=config.name,
             changes={k: [before[k], changes[k]] for k in changes if k != "metadata"})
    return info.config
