"""A source's cursor: where the watcher is in one source, kept in the state bucket.

One record per source (``watcher.<source>``, ``cursor_key``): the last announced head, whether
the source is failing (and why), whether its branch is gone, the branch resolved when none was
configured, for sources other than the primary a digest of each environment's conveyor.yaml
block as of the last announcement, and for the primary the last good conveyor.yaml text with
what its generators matched, and the log's epoch it was written under (a cursor of another
log is not trusted: ``poller.py``). ``SourcePoller`` (``poller.py``) writes it after the events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.config import Config, parse_config
from orchestrator.domain.generator_pulls import PullRequest
from orchestrator.errors import ConfigError


def cursor_key(source: str) -> str:
    return f"watcher.{source}"


@dataclass
class Cursor:
    head: str | None = None
    config_text: str | None = None
    failing: bool = False
    reason: str = ""
    deleted: bool = False
    branch: str = ""
    envs: dict[str, str] = field(default_factory=dict)
    config_dirs: tuple[str, ...] = ()  # what the in-force config's generators matched
    config_pulls: tuple[PullRequest, ...] = ()  # the pull requests its generators used
    epoch: str = ""  # the log's epoch this cursor was written under ("" = before epochs)

    def config(self) -> Config | None:
        """The config in force, as the cursor holds it (None: none yet, or unreadable)."""
        if self.config_text is None:
            return None
        try:
            return parse_config(self.config_text, dirs=self.config_dirs,
                                pulls=self.config_pulls)
        except ConfigError:
            return None

    def to_json(self) -> dict[str, Any]:
        return {"head": self.head, "config_text": self.config_text, "failing": self.failing,
                "reason": self.reason, "deleted": self.deleted, "branch": self.branch,
                "envs": self.envs, "config_dirs": list(self.config_dirs),
                "config_pulls": [p.to_dict() for p in self.config_pulls],
                **({"epoch": self.epoch} if self.epoch else {})}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Cursor:
        envs = raw.get("envs")
        return cls(raw.get("head"), raw.get("config_text"), bool(raw.get("failing")),
                   str(raw.get("reason") or ""), bool(raw.get("deleted")),
                   str(raw.get("branch") or ""),
                   dict(envs) if isinstance(envs, dict) else {},
                   tuple(str(d) for d in raw.get("config_dirs") or ()),
                   tuple(PullRequest.from_dict(p) for p in raw.get("config_pulls") or ()),
                   str(raw.get("epoch") or ""))
