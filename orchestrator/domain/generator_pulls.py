"""The ``pullRequests`` generator's input: an open pull request as templates see it, and the
parameters one gives a template (``{{number}}``, ``{{branch_slug}}``, ``{{head_short_sha}}``...).
Pure; the watcher lists the forge's pull requests (``orchestrator/gitops/forge.py``) and
``generators.py`` selects and expands them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PullRequest:
    """An open pull request of the primary repository, as a generator sees it (the forge's
    answer reduced to what templates may use, so every reader expands the same)."""

    number: int
    branch: str  # the head branch, in the primary repository (forks are never listed)
    target_branch: str
    head_sha: str
    labels: tuple[str, ...] = ()
    updated_at: float = 0.0  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "branch": self.branch,
                "target_branch": self.target_branch, "head_sha": self.head_sha,
                "labels": list(self.labels), "updated_at": self.updated_at}

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> PullRequest:
        return PullRequest(int(raw["number"]), str(raw["branch"]), str(raw["target_branch"]),
                           str(raw["head_sha"]), tuple(str(x) for x in raw.get("labels") or ()),
                           float(raw.get("updated_at") or 0.0))


def pr_source(number: int) -> str:
    """The source a pull request's environments follow: its head branch, polled like any."""
    return f"pr-{number}"


def pr_params(pr: PullRequest) -> dict[str, Any]:
    slug = re.sub(r"[^a-z0-9-]+", "-", pr.branch.lower()).strip("-")[:50]
    return {"number": pr.number, "branch": pr.branch, "branch_slug": slug,
            "target_branch": pr.target_branch, "head_sha": pr.head_sha,
            "head_short_sha": pr.head_sha[:8], "_source": pr_source(pr.number)}
