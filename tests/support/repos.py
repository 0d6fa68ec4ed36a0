"""Real git repositories for tests and benchmarks: the demo's own pygit2 helper, reused."""

from orchestrator.demo_repo import AUTHOR, Repo

__all__ = ["AUTHOR", "Repo"]
