"""One frozen payload class per event type: the ``data`` an event carries, field by field.

(Over 400 lines on purpose: this is the event schema, one short class per type, read top to
bottom like the table it generates; splitting it by stage would scatter the shared bases.)

Each class names its event type (``TYPE``) and the payload version it describes
(``VERSION``); ``orchestrator/domain/codec.py`` builds events' ``data`` from them and reads it
back, upcasting what older versions wrote. The field comments are the documentation:
``docs/event-log.md``'s table of types and fields is generated from these classes
(``python -m orchestrator.domain.payload_docs``; ``tests/test_payloads.py`` fails when the two
disagree).

Every field has a default: an event written before a field existed still decodes. Keys a class
does not name are kept in ``extra`` (stage inputs are passed on whole from stage to stage), so
encoding a decoded payload gives the same data back.

Fields shared by many types live in small bases (``CommitFields``, ``StageInput``,
``ApplyFields``, ``SourceFields``, ``DeadLetter``); a type's table row lists all of its fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from orchestrator.domain import events as ev

CURRENT_VERSION = ev.PAYLOAD_VERSION
"""Version 1: the untyped ``data`` written before these classes (no ``dataschema``). Version 2:
dead letters carry ``code``; an ``apply.failed`` for an unhealthy rollout lists the objects
under ``unhealthy_objects`` (version 1 put them in ``objects``, the bundle's object count)."""

Json = Mapping[str, Any]


def key(name: str) -> dict[str, str]:
    """Field metadata: the data key when it is not the field's name (``for`` is Python's)."""
    return {"key": name}


@dataclass(frozen=True, slots=True, kw_only=True)
class Payload:
    """Fields any event may carry. ``retry_*``: an input re-published by ``conveyor retry``."""

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = CURRENT_VERSION
    retry_of: str = ""  # the dead letter or failure this input is a retry of
    retry: int = 0  # 1, 2, ... for the n-th retry of that event
    original_id: str = ""  # the id of the input being retried
    extra: Json = field(default_factory=dict)  # keys this version does not name, as written

    def error_text(self) -> str:
        """Why it failed, in words ("" when it did not)."""
        return ""

    def describe(self) -> str:
        """One line for a trace."""
        return self.error_text()


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitFields(Payload):
    revision: str = ""  # the commit SHA
    short: str = ""  # its abbreviation
    message: str = ""  # the commit's subject line
    author: str = ""  # the commit's author (name <email>)
    committed_at: str = ""  # ISO 8601
    branch: str = ""  # the source branch
    source: str = ""  # the source's name in conveyor.yaml (``default``: the primary)
    repo: str = ""  # the source's repository (path or URL without credentials)
    merged: tuple[str, ...] = ()  # a merge commit's other parents (a merged pull request)

    def has_commit(self) -> bool:
        return bool(self.author or self.message or self.short)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitDetected(CommitFields):
    TYPE: ClassVar[str] = ev.COMMIT_DETECTED
    env: Json | None = None  # the environment's configuration at the commit
    changed: tuple[str, ...] = ()  # paths the commit changed (at most 50)
    source_config: Json | None = None  # a secondary source's config (credential references)
    signature: Json | None = None  # the signature verdict, when the source requires one


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRejected(CommitDetected):
    TYPE: ClassVar[str] = ev.COMMIT_REJECTED
    error: str = ""
    reason: str = ""  # e.g. Unsigned, UnknownKey

    def error_text(self) -> str:
        return self.error or self.reason


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigLoaded(CommitFields):
    TYPE: ClassVar[str] = ev.CONFIG_LOADED
    text: str = ""  # conveyor.yaml as committed
    environments: tuple[str, ...] = ()  # the environments it declares
    dirs: tuple[str, ...] | None = None  # the directories its generators listed (when any)
    pulls: tuple[Json, ...] | None = None  # the open pull requests its generators expanded


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigInvalid(CommitFields):
    TYPE: ClassVar[str] = ev.CONFIG_INVALID
    error: str = ""  # file:line: field: what is wrong
    file: str = ""  # the file at fault (conveyor.yaml)
    line: int | None = None  # its line, when known
    config_field: str | None = field(default=None, metadata=key("field"))  # e.g. environments.dev

    def error_text(self) -> str:
        return self.error


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvironmentRemoved(CommitFields):
    TYPE: ClassVar[str] = ev.ENV_REMOVED
    env: Json | None = None  # the environment's last configuration
    on_remove: str = field(default="", metadata=key("onRemove"))  # prune or orphan
    generator: str = ""  # the generator that made it ("" = declared by hand)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceFields(Payload):
    source: str = ""  # the source's name in conveyor.yaml
    repo: str = ""  # its repository, without credentials
    branch: str = ""  # the branch watched


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceFetchFailed(SourceFields):
    TYPE: ClassVar[str] = ev.SOURCE_FETCH_FAILED
    error: str = ""
    reason: str = ""  # e.g. AuthenticationFailed, Unreachable
    transient: bool = False  # whether a retry may help
    retry_in: float = 0.0  # seconds until the next attempt

    def error_text(self) -> str:
        return self.error or self.reason


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRecovered(SourceFields):
    TYPE: ClassVar[str] = ev.SOURCE_RECOVERED
    after: str = ""  # the reason of the failure it recovered from


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRewritten(SourceFields):
    TYPE: ClassVar[str] = ev.SOURCE_REWRITTEN
    old_head: str = ""  # the head before the force-push
    new_head: str = ""  # the head after it


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceBranchDeleted(SourceFields):
    TYPE: ClassVar[str] = ev.SOURCE_BRANCH_DELETED
    last_head: str = ""  # the branch's last known head


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshRequested(Payload):
    TYPE: ClassVar[str] = ev.REFRESH_REQUESTED
    by: str = ""  # the api client's address, or webhook:<provider>
    source: str = ""  # the source a webhook matched ("" = all)
    delivery: str = ""  # the webhook's delivery id
    branches: tuple[str, ...] = ()  # the branches a webhook said were pushed


@dataclass(frozen=True, slots=True, kw_only=True)
class StageInput(CommitFields):
    env: Json | None = None  # the environment's configuration at the commit
    source_config: Json | None = None
    origin_seq: int = 0  # stream sequence of the commit event: orders applies
    cause: str = ""  # commit, sync (a manual re-apply) or drift (a self-heal)
    requested_by: str = ""  # who asked for a sync
    health_rules: Json | None = None  # the health rule files conveyor.yaml names, at the commit


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderSucceeded(StageInput):
    TYPE: ClassVar[str] = ev.RENDER_SUCCEEDED
    digest: str = ""  # sha256 of the canonical bundle in the object store
    objects: int = 0
    duration_ms: float | None = None  # how long the render took
    renderer: str = ""  # plain, kustomize, jsonnet, jinja, helm
    tool_version: str = ""  # e.g. kubectl v1.33 (kustomize v5.6)
    render_key: str = ""  # the render cache key
    cache: str = ""  # hit when the bundle came from the cache

    def describe(self) -> str:
        return f"{self.objects} objects, {self.digest[:19]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderFailed(StageInput):
    TYPE: ClassVar[str] = ev.RENDER_FAILED
    error: str = ""  # the first problems, joined
    errors: tuple[str, ...] = ()  # every problem found, with file and line
    reason: str = ""  # e.g. InvalidManifest, ToolFailed
    duration_ms: float | None = None  # how long the render took

    def error_text(self) -> str:
        return self.error or self.reason


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter(Payload):
    """Written by the runtime when a message ended without its handler's outcome."""

    reason: str = ""  # in words
    code: str = ""  # Exhausted, Malformed, SilentFail, or the PermanentError's reason
    attempts: int = 0  # deliveries it had
    original: Json | None = None  # the stage input, which ``conveyor retry`` publishes again
    consumer: str = ""  # the durable consumer that gave up
    malformed: bool = False  # the message was not an event at all
    stream_seq: int = 0  # (malformed) where it is in the stream
    nats_subject: str = ""  # (malformed)
    payload: str = ""  # (malformed) its first 4 KiB

    def error_text(self) -> str:
        return self.reason

    def describe(self) -> str:
        return f"reason: {self.reason}" if self.reason else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderDead(DeadLetter):
    TYPE: ClassVar[str] = ev.RENDER_DEAD


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyDead(DeadLetter):
    TYPE: ClassVar[str] = ev.APPLY_DEAD


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyDead(DeadLetter):
    TYPE: ClassVar[str] = ev.NOTIFY_DEAD


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyFields(CommitFields):
    digest: str = ""
    objects: int = 0  # objects in the bundle
    origin_seq: int = 0
    cause: str = ""  # commit, sync or drift
    target: str = ""  # e.g. "git deploy/dev of <repo>", "kubernetes https://..."
    duration_ms: float | None = None  # how long the apply took


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyStarted(ApplyFields):
    TYPE: ClassVar[str] = ev.APPLY_STARTED
    attempt: int = 0  # the delivery of the render that starts it


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplySucceeded(ApplyFields):
    TYPE: ClassVar[str] = ev.APPLY_SUCCEEDED
    summary: str = ""  # what the target did, in words
    commit: str = ""  # (git) the target branch's new head
    parent: str = ""  # (git remote) the head it was pushed on top of
    attempts: int = 0  # (git remote) pushes it took
    created: int = 0  # (kubernetes) objects created, configured and unchanged by the sync
    configured: int = 0
    unchanged: int = 0
    pruned: tuple[str, ...] = ()  # (kubernetes, sync.prune) objects deleted
    not_pruned: tuple[str, ...] = ()  # objects that left the bundle but were kept
    waves: int = 0  # (kubernetes) sync waves applied
    inventory: Json | None = None  # (kubernetes) the inventory ConfigMap and its entries
    health: Json | None = None  # (kubernetes) {status, message, unhealthy, objects, no_rule}
    superseded_by: str = ""  # found applied after a restart, a newer revision applied since

    def describe(self) -> str:
        return self.summary


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplySkipped(ApplySucceeded):
    TYPE: ClassVar[str] = ev.APPLY_SKIPPED


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyFailed(ApplySucceeded):
    TYPE: ClassVar[str] = ev.APPLY_FAILED
    error: str = ""  # what went wrong, in words
    reason: str = ""  # e.g. Degraded, HealthCheckTimeout, Forbidden, TargetMoved
    unhealthy_objects: tuple[Json, ...] = ()  # (unhealthy rollout) the objects not ready

    def error_text(self) -> str:
        return self.error or self.reason

    def describe(self) -> str:
        return self.error_text()


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplySuperseded(ApplyFields):
    TYPE: ClassVar[str] = ev.APPLY_SUPERSEDED
    superseded_by: str = ""  # the newer revision that won

    def describe(self) -> str:
        return f"superseded_by: {self.superseded_by}" if self.superseded_by else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyRetrying(ApplyFields):
    TYPE: ClassVar[str] = ev.APPLY_RETRYING
    error: str = ""  # the transient failure
    attempt: int = 0  # the delivery that failed
    delay: float = 0.0  # seconds until the next delivery

    def error_text(self) -> str:
        return self.error


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvironmentPruned(ApplyFields):
    TYPE: ClassVar[str] = ev.ENV_PRUNED
    summary: str = ""  # what clearing the target did
    generator: str = ""  # the generator that made the environment

    def describe(self) -> str:
        return self.summary


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthFields(Payload):
    revision: str = ""  # the commit judged
    short: str = ""  # its abbreviation
    digest: str = ""  # the bundle judged
    origin_seq: int = 0  # stream sequence of the commit event
    cause: str = ""  # commit, sync or drift
    status: str = ""  # Healthy, Suspended, Progressing, Missing, Degraded, Unknown
    message: str = ""  # the verdict in words
    unhealthy: int = 0  # objects not ready (exact)
    objects: tuple[Json, ...] = ()  # those objects (at most 50), each with the rule that judged it
    no_rule: tuple[str, ...] = ()  # kinds (Kind.group) no health rule knows: not waited for
    children: tuple[Json, ...] = ()  # per owning workload, its live children (kube only)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthHealthy(HealthFields):
    TYPE: ClassVar[str] = ev.HEALTH_HEALTHY


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthProgressing(HealthFields):
    TYPE: ClassVar[str] = ev.HEALTH_PROGRESSING


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthDegraded(HealthFields):
    TYPE: ClassVar[str] = ev.HEALTH_DEGRADED

    def error_text(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftDetected(Payload):
    TYPE: ClassVar[str] = ev.DRIFT_DETECTED
    revision: str = ""  # the commit the cluster should hold
    digest: str = ""  # the bundle the cluster should hold
    origin_seq: int = 0  # stream sequence of that commit's event
    summary: str = ""  # the differences in words
    count: int = 0  # objects that drifted
    objects: tuple[Json, ...] = ()  # {kind, namespace, name, change} (at most 50)
    self_heal: bool = False  # whether a heal follows
    target: str = ""  # the cluster

    def describe(self) -> str:
        return self.summary


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyFields(Payload):
    route: str = ""  # the route's name in conveyor.yaml
    provider: str | None = None  # slack, github, webhook, ...
    for_type: str = field(default="", metadata=key("for"))  # the event type notified about
    attempts: int = 0  # deliveries it took

    def describe(self) -> str:
        return self.error_text() or (f"route: {self.route}" if self.route else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifySent(NotifyFields):
    TYPE: ClassVar[str] = ev.NOTIFY_SENT
    answer: str = ""  # the provider's answer (first 200 characters)
    updated: bool = False  # an earlier message was edited instead of a new one sent
    duration_ms: float | None = None  # how long the delivery took
    template_error: str = ""  # a message template that failed (the default was sent)


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyFailed(NotifyFields):
    TYPE: ClassVar[str] = ev.NOTIFY_FAILED
    error: str = ""  # the provider's answer or the delivery error

    def error_text(self) -> str:
        return self.error


@dataclass(frozen=True, slots=True, kw_only=True)
class LogReset(Payload):
    TYPE: ClassVar[str] = ev.LOG_RESET
    target_epoch: str = ""  # the epoch the target was written under
    log_epoch: str = ""  # this log's epoch
    target_revision: str | None = None  # the revision the target holds
    target_seq: int | None = None  # the Conveyor-Seq the target recorded (of the old log)
    digest: str | None = None  # the bundle the target holds
    target: str = ""  # the target, in words
    summary: str = ""

    def describe(self) -> str:
        return self.summary


@dataclass(frozen=True, slots=True, kw_only=True)
class GitopsFields(Payload):
    """A commit Conveyor made (or proposed as a pull request) to the watched repository."""

    commit: str = ""  # the commit made
    parent: str | None = None  # the branch head it was made on
    branch: str = ""  # the branch written (the watched source branch)
    repo: str = ""  # the repository, without credentials
    source: str = ""  # the source's name in conveyor.yaml
    files: tuple[str, ...] = ()  # the files the commit changed
    attempts: int = 0  # pushes it took (a concurrent push is rebased and retried)
    via: str = ""  # commit or pull-request
    by: str = ""  # who asked: the api client's address or the CLI user
    message: str = ""  # the commit's subject
    pull_request: Json | None = None  # {url, number} with --via pull-request


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseCommitted(GitopsFields):
    TYPE: ClassVar[str] = ev.RELEASE_COMMITTED
    images: tuple[str, ...] = ()  # NAME=REF[:TAG|@DIGEST] written
    sets: tuple[str, ...] = ()  # PATH=VALUE written into a Helm values file


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseProposed(ReleaseCommitted):
    TYPE: ClassVar[str] = ev.RELEASE_PROPOSED


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackCommitted(GitopsFields):
    TYPE: ClassVar[str] = ev.ROLLBACK_COMMITTED
    to: str = ""  # the revision whose inputs were restored
    to_digest: str = ""  # the bundle that revision deployed
    paths: tuple[str, ...] = ()  # the inputs restored


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackProposed(RollbackCommitted):
    TYPE: ClassVar[str] = ev.ROLLBACK_PROPOSED


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionRequested(Payload):
    TYPE: ClassVar[str] = ev.PROMOTION_REQUESTED
    from_env: str = field(default="", metadata=key("from"))  # the environment promoted from
    revision: str = ""  # the revision it runs
    auto: bool = False  # fired by the promotion rule, not by a person
    by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionRefused(PromotionRequested):
    TYPE: ClassVar[str] = ev.PROMOTION_REFUSED
    reason: str = ""  # the gate that refused it


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionCommitted(GitopsFields):
    TYPE: ClassVar[str] = ev.PROMOTION_COMMITTED
    from_env: str = field(default="", metadata=key("from"))
    revision: str = ""  # the revision of FROM promoted
    auto: bool = False
    images: tuple[str, ...] = ()  # the images written into TO's declaration


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionProposed(PromotionCommitted):
    TYPE: ClassVar[str] = ev.PROMOTION_PROPOSED


@dataclass(frozen=True, slots=True, kw_only=True)
class PreviewRendered(Payload):
    """One environment of a pull request, rendered at its head and diffed (nothing applied)."""

    TYPE: ClassVar[str] = ev.PREVIEW_RENDERED
    pull_request: int = 0  # the pull request's number
    base: str = ""  # the base branch's head the settings came from
    env: str = ""
    ok: bool = True  # False: the render failed (see error)
    objects: int = 0  # objects rendered
    error: str = ""  # why the render failed
    running: str = ""  # the revision the environment runs ("" when none)
    changes: Json = field(default_factory=dict)  # {added, changed, removed}: object counts

    def error_text(self) -> str:
        return self.error


@dataclass(frozen=True, slots=True, kw_only=True)
class PreviewPosted(Payload):
    TYPE: ClassVar[str] = ev.PREVIEW_POSTED
    pull_request: int = 0
    comment: int = 0  # the forge's id of Conveyor's one comment on the pull request
    created: bool = False  # False: the comment was updated
    environments: tuple[str, ...] = ()  # the environments previewed


@dataclass(frozen=True, slots=True, kw_only=True)
class PreviewFailed(Payload):
    TYPE: ClassVar[str] = ev.PREVIEW_FAILED
    pull_request: int = 0
    error: str = ""  # why no preview could be posted
    reason: str = ""

    def error_text(self) -> str:
        return self.error


@dataclass(frozen=True, slots=True, kw_only=True)
class Unknown(Payload):
    """An event type this version does not know: everything is in ``extra``."""


CLASSES: tuple[type[Payload], ...] = (
    CommitDetected, CommitRejected, ConfigLoaded, ConfigInvalid, SourceFetchFailed,
    SourceRecovered, SourceRewritten, SourceBranchDeleted, RefreshRequested, RenderSucceeded,
    RenderFailed, RenderDead, ApplyStarted, ApplySucceeded, ApplyFailed, ApplySkipped,
    ApplySuperseded, ApplyRetrying, ApplyDead, HealthHealthy, HealthDegraded, HealthProgressing,
    DriftDetected, NotifySent, NotifyFailed, NotifyDead, EnvironmentRemoved, EnvironmentPruned,
    LogReset, ReleaseCommitted, ReleaseProposed, RollbackCommitted, RollbackProposed,
    PromotionRequested, PromotionRefused, PromotionCommitted, PromotionProposed,
    PreviewRendered, PreviewPosted, PreviewFailed,
)
BY_TYPE: Mapping[str, type[Payload]] = MappingProxyType({c.TYPE: c for c in CLASSES})
