"""Who may do what on the bus: one NATS user per service, with only the subjects it needs.

Whoever can publish to NATS can make the applier deploy anything, and whoever can read the
object store reads every rendered Secret. So each service connects as its own user, and the
server lets it publish (NATS publish permissions cover the JetStream API too: every API call,
KV put and object-store chunk is a publish) and subscribe only to what this table lists. The
same table generates the embedded server's config (``conveyor up``, ``nats_auth``), is what
``k8s/base/nats.yaml`` must say (``tests/security/test_bus_permissions.py`` compares them) and
is printed in docs/security.md (``python -m orchestrator.adapters.nats_permissions`` prints
the Markdown table and the nats.conf users; a test compares both).

What each grant is for:

- **events**: ``conveyor.events.<env>.<stage>.<outcome>``; each service publishes only its own
  stage's events (a JetStream publish is a request whose ack comes back to its inbox);
- **the event stream**: reading it (``STREAM.INFO``/``MSG.GET``/``DIRECT.GET`` of
  ``CONVEYOR``) and its consumers (``CONSUMER.CREATE``/``INFO``/``MSG.NEXT``/``LIST`` and
  ``$JS.ACK``); events carry no Secret values, so every service may read the log;
- **a bucket** ``$KV.<bucket>.<key prefix>.>`` to write, ``KV_<bucket>``'s read API to read;
  the bundle store ``$O.conveyor-bundles.>`` and ``OBJ_conveyor-bundles``' read API;
- **the schema** (``STREAM.CREATE``/``UPDATE`` of Conveyor's five streams): only the api (in
  k8s) and the operator user of ``conveyor up`` (the bootstrap connection, before the
  services connect) create or update them; the other services wait until they exist;
- **replies**: each user subscribes only under its own inbox prefix (``_INBOX_<user>.>``), so
  no service reads the answers another one gets (a KV read, a fetched message).

Nobody but the operator deletes or purges a Conveyor stream, or a consumer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from orchestrator import subjects

OPERATOR: Final = "conveyor"  # the embedded server's operator user: `up`'s bootstrap, the CLI
SERVICES: Final = ("git-watcher", "renderer", "applier", "notifier", "api")
API: Final = "api"
SCHEMA_MANAGERS: Final = (API,)  # besides the operator

KV_STATE = subjects.STATE_BUCKET
KV_DELIVERIES = subjects.DELIVERY_BUCKET
KV_LEASES = subjects.LEASE_BUCKET
BUNDLES = subjects.BUNDLE_BUCKET
STREAMS: Final = (subjects.STREAM, f"KV_{KV_STATE}", f"KV_{KV_DELIVERIES}", f"KV_{KV_LEASES}",
                  f"OBJ_{BUNDLES}")


def _events(*stages: str) -> list[str]:
    """Every environment's events of these stages (``stage``: any outcome, ``stage.outcome``:
    that one)."""
    return [f"{subjects.PREFIX}.*.{stage}" + ("" if "." in stage else ".>") for stage in stages]


def _read_stream(stream: str) -> list[str]:
    """Read a stream: its messages, and consumers of it (ephemeral readers, durables)."""
    return [f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>", f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>", f"$JS.API.CONSUMER.INFO.{stream}.*",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*", f"$JS.ACK.{stream}.>"]


_COMMON = (  # every service: look at the five streams (readiness), read the event log
    *(f"$JS.API.STREAM.INFO.{s}" for s in STREAMS),
    f"$JS.API.CONSUMER.LIST.{subjects.STREAM}", f"$JS.API.CONSUMER.NAMES.{subjects.STREAM}",
    "$JS.API.STREAM.NAMES",  # names only: the object store finds its stream by subject
    *_read_stream(subjects.STREAM), "$JS.FC.>",
)
_SCHEMA = (*(f"$JS.API.STREAM.CREATE.{s}" for s in STREAMS),
           *(f"$JS.API.STREAM.UPDATE.{s}" for s in STREAMS))


@dataclass(frozen=True, slots=True)
class Grant:
    """One principal's permissions, and what they are for (the docs table)."""

    events: tuple[str, ...]  # the stages whose events it publishes (">": any)
    reads: tuple[str, ...]  # streams it reads besides the event log (KV_…, OBJ_…)
    writes: tuple[str, ...]  # KV keys / object-store subjects it writes
    may: str  # in words, for docs/security.md
    may_not: str
    schema: bool = False  # creates and updates Conveyor's streams
    extra: tuple[str, ...] = ()  # other publish subjects, each with its reason in the source
    deny: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()  # beyond its own inbox

    def publish(self) -> list[str]:
        events = [f"{subjects.PREFIX}.>"] if self.events == (">",) else _events(*self.events)
        return [*events, *(s for r in self.reads for s in _read_stream(r)), *self.writes,
                *(_SCHEMA if self.schema else ()), *self.extra]


def _kv_keys(bucket: str, prefix: str = ">") -> str:
    return f"$KV.{bucket}.>" if prefix == ">" else f"$KV.{bucket}.{prefix}.>"


GRANTS: Final[Mapping[str, Grant]] = MappingProxyType({
    "git-watcher": Grant(
        events=("commit", "config", "source", "release", "rollback", "promotion",
                "environment.removed"),
        reads=(f"KV_{KV_STATE}",), writes=(_kv_keys(KV_STATE, "watcher"),),
        may="publish commit, config, source and environment-removed events, and (the "
            "auto-promoter, which holds the push credentials) release, rollback and promotion "
            "events; keep its cursors",
        may_not="publish render, apply, notify or control events; read bundles, deliveries "
                "or leases; create, update or delete streams"),
    "renderer": Grant(
        events=("render",), reads=(f"KV_{KV_STATE}", f"OBJ_{BUNDLES}"),
        writes=(_kv_keys(KV_STATE, "render"), f"$O.{BUNDLES}.>"),
        may="publish render events; write bundles; keep its render cache",
        may_not="publish apply, commit, notify or control events; read deliveries or "
                "leases; write the projection; create, update or delete streams"),
    "applier": Grant(
        events=("apply", "health", "drift", "log", "environment.pruned"),
        reads=(f"OBJ_{BUNDLES}", f"KV_{KV_LEASES}"), writes=(_kv_keys(KV_LEASES),),
        may="publish apply, health, drift, log and environment-pruned events; read bundles; "
            "hold the per-environment leases",
        may_not="publish render, commit, notify or control events; write bundles or "
                "conveyor-state; read deliveries; create, update or delete streams"),
    "notifier": Grant(
        events=("notify",), reads=(f"KV_{KV_DELIVERIES}",),
        writes=(_kv_keys(KV_DELIVERIES),),
        may="publish notify events; keep its delivery records",
        may_not="publish any other event; read bundles, conveyor-state or leases; create, "
                "update or delete streams"),
    "api": Grant(
        events=(">",), reads=(f"KV_{KV_STATE}", f"OBJ_{BUNDLES}"),
        writes=(_kv_keys(KV_STATE),), schema=True,
        deny=(*(f"$JS.API.STREAM.DELETE.{s}" for s in STREAMS),
              *(s for b in (KV_DELIVERIES, KV_LEASES)
                for s in (*_read_stream(f"KV_{b}"), _kv_keys(b)))),
        may="publish control events (refresh; sync and retry re-publish a stage's event; "
            "release, rollback and promotion through the api); write the projection; read "
            "bundles (served masked); create and update the schema (replay folds in memory: "
            "it creates no stream)",
        may_not="delete a Conveyor stream; read or write deliveries or leases; write bundles"),
})


DURABLES: Final[Mapping[str, str]] = MappingProxyType({  # each service's durable, all envs
    "git-watcher": "git-watcher", "renderer": "renderer", "applier": "applier",
    "notifier": "notifier", "api": "projector"})


def _consumer(durable: str) -> list[str]:
    """Taking over a durable consumer of the event log: reconfiguring it, pulling from it,
    acking its messages."""
    stream = subjects.STREAM
    return [f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.>"]


def publish_deny(user: str) -> list[str]:
    """What ``user`` may not publish even where a pattern allows it: its grant's denials, and
    the other services' consumers (their all-environment durables; see docs/security.md for
    the environment-scoped ones)."""
    others = [s for u, d in DURABLES.items() if u != user for s in _consumer(d)]
    return list(dict.fromkeys([*GRANTS[user].deny, *others]))


def inbox_prefix(user: str) -> str:
    """The inbox prefix a user's connection must use (its replies arrive only there)."""
    return f"_INBOX_{user}" if user in GRANTS else "_INBOX"


def manages_schema(user: str) -> bool:
    """Whether ``user`` creates and updates the streams (the others wait for them): the api,
    the operator, and any user this table does not know (a server without per-service users
    such as the tests' or an operator's own)."""
    return user in SCHEMA_MANAGERS or user not in GRANTS


def publish_allow(user: str) -> list[str]:
    return list(dict.fromkeys([*_COMMON, *GRANTS[user].publish()]))


def subscribe_allow(user: str) -> list[str]:
    return [f"{inbox_prefix(user)}.>", *GRANTS[user].subscribe]


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` the rest (one token or more)."""
    want, have = pattern.split("."), subject.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or (part != "*" and part != have[i]):
            return False
    return len(want) == len(have)


def may_publish(user: str, subject: str) -> bool:
    """What the server decides for ``user`` publishing to ``subject`` (deny wins)."""
    if user not in GRANTS:
        return True  # the operator
    return any(matches(p, subject) for p in publish_allow(user)) and \
        not any(matches(p, subject) for p in publish_deny(user))


def _quoted(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in items) + "]"


def user_entry(user: str, password: str) -> str:
    """One ``users`` entry of nats.conf (``password`` as given: a quoted string, or a
    ``$VARIABLE`` the server reads from its environment)."""
    deny = f", deny: {_quoted(publish_deny(user))}"
    return (f"{{user: {user}, password: {password}, permissions: {{\n"
            f"  publish: {{allow: {_quoted(publish_allow(user))}{deny}}}\n"
            f"  subscribe: {{allow: {_quoted(subscribe_allow(user))}}}}}}}")


def users_block(passwords: Mapping[str, str], operator_password: str | None = None,
                indent: str = "    ") -> str:
    """The ``users: [...]`` list: each service with its permissions, and (embedded) the
    operator with all of them."""
    entries = [user_entry(u, passwords[u]) for u in SERVICES]
    if operator_password is not None:
        entries.insert(0, f"{{user: {OPERATOR}, password: {operator_password}}}")
    body = "\n".join(indent + line for e in entries for line in e.splitlines())
    return f"users: [\n{body}\n]"


def k8s_users_block() -> str:
    """The users of k8s/base's nats.conf: passwords from the Secret conveyor-nats."""
    return users_block({u: f"$NATS_{u.upper().replace('-', '_')}_PASSWORD" for u in SERVICES},
                       indent="  ")


def docs_table() -> str:
    """docs/security.md's NATS permission table."""
    def code(items: tuple[str, ...] | list[str]) -> str:
        return " ".join(f"`{i}`" for i in items) or "—"

    rows = ["| user | may | events it publishes | reads, besides the event log | writes | "
            "may not |", "|---|---|---|---|---|---|"]
    for user in SERVICES:
        g = GRANTS[user]
        events = ["conveyor.events.>"] if g.events == (">",) else _events(*g.events)
        writes = [*g.writes, *(["schema: create/update " + ", ".join(STREAMS)]
                               if g.schema else [])]
        extra = f"; also {code(list(g.extra))}, except {code(list(g.deny))}" if g.extra else ""
        rows.append(f"| {user} | {g.may} | {code(events)} | {code(g.reads)} | "
                    f"{code(writes)}{extra} | {g.may_not} |")
    rows.append(f"| {OPERATOR} (embedded server only) | everything: the bootstrap connection "
                "of `conveyor up` (creates the schema before the services connect) and the "
                "operator's `replay`/`diff`/`release --repo` with `--nats` | `>` | `>` | `>` "
                "| — |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - a maintainer's tool
    print(docs_table() if sys.argv[1:] == ["docs"] else k8s_users_block())
