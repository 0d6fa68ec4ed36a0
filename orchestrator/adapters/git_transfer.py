"""One-shot fetches and pushes, for a repository Conveyor writes to (the git target, gitops,
previews): the caller owns the repository and runs these in a worker thread; credentials
(``git_credentials``), host key checks (``git_callbacks``) and error translation
(``git_errors``) are the mirror's own.

A local repository with a working tree cannot be pushed to by libgit2: ``push_to_checkout``
pushes with the git CLI as ``receive.denyCurrentBranch=updateInstead`` does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pygit2
import structlog

from orchestrator.adapters.git_callbacks import Callbacks, PushCallbacks, connection
from orchestrator.adapters.git_credentials import Credentials
from orchestrator.adapters.git_errors import Refused, scrub, translate
from orchestrator.domain.giturls import GitUrl
from orchestrator.errors import ConflictError, PermanentError

log = structlog.get_logger(__name__)

_NON_FAST_FORWARD = ("non-fastforward", "non-fast-forward", "not present locally")


def no_redirects(repo: pygit2.Repository) -> None:
    """libgit2 follows an HTTP redirect of the first request to any host by default, and the
    bearer header and credentials would follow it: a mirror follows none (libgit2 reads
    ``http.followRedirects`` from the repository's config)."""
    config = repo.config
    if "http.followRedirects" not in config or config["http.followRedirects"] != "false":
        config["http.followRedirects"] = "false"


def remote_url(url: GitUrl) -> str:
    """What libgit2 is given to reach ``url`` (a ``file://`` URL as its path)."""
    return url.path if url.scheme == "file" else url.display()


def fetch_refs(repo: pygit2.Repository, url: GitUrl, refspecs: list[str], creds: Credentials,
               *, where: str, check: str) -> None:
    """One fetch of ``refspecs`` (pruned), every failure translated (``where`` names it)."""
    callbacks = Callbacks(creds, url)
    no_redirects(repo)
    remote = repo.remotes.create_anonymous(remote_url(url))
    try:
        with connection(creds, url):
            remote.fetch(refspecs, callbacks=callbacks, prune=pygit2.enums.FetchPrune.PRUNE)
    except (pygit2.GitError, OSError, Refused) as exc:
        error = translate(exc, source="", url=url, secrets=creds.secrets(), where=where,
                          check=check)
        log.warning("git.fetch_failed", where=where, reason=error.reason, error=error.message)
        raise error from None


def push_refs(repo: pygit2.Repository, url: GitUrl, refspecs: list[str], creds: Credentials,
              *, where: str, check: str) -> None:
    """One push of ``refspecs``, never forced unless a refspec says ``+``.

    A push that is not a fast-forward of what the remote holds (someone else pushed since the
    last fetch), or that the server refuses for a reference, raises
    ``ConflictError(reason="PushRejected")``: fetch again and decide. Any other failure is
    translated like a fetch's (``action`` "push").
    """
    callbacks = PushCallbacks(creds, url)
    no_redirects(repo)
    remote = repo.remotes.create_anonymous(remote_url(url))
    secrets = creds.secrets()
    try:
        with connection(creds, url):
            remote.push(refspecs, callbacks=callbacks)
    except (pygit2.GitError, OSError, Refused) as exc:
        detail = scrub(str(exc), secrets)
        if isinstance(exc, pygit2.GitError) and any(s in detail.lower()
                                                    for s in _NON_FAST_FORWARD):
            raise ConflictError(f"{where}: push rejected ({detail})",
                                reason="PushRejected") from None
        error = translate(exc, source="", url=url, secrets=secrets, where=where,
                          action="push", check=check)
        log.warning("git.push_failed", where=where, reason=error.reason, error=error.message)
        raise error from None
    if callbacks.rejected:
        detail = scrub("; ".join(f"{ref}: {msg}" for ref, msg in callbacks.rejected.items()),
                        secrets)
        raise ConflictError(f"{where}: the server rejected the push ({detail})",
                            reason="PushRejected")


def has_worktree(url: GitUrl) -> bool:
    """A local repository with a working tree (libgit2 cannot push to those)."""
    if url.scheme != "local":
        return False
    path = Path(url.path).expanduser()
    return (path / ".git").exists()


def push_to_checkout(repo_path: Path, url: GitUrl, refspec: str, *, where: str) -> None:
    """Push to a local repository that has a working tree, with the git CLI, the way
    ``receive.denyCurrentBranch=updateInstead`` does it: the checked-out branch moves only
    when its working tree is clean, and the working tree follows it. A push that is not a
    fast-forward is ``ConflictError(reason="PushRejected")``; a dirty checkout is refused."""
    target = str(Path(url.path).expanduser().resolve())
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"})
    proc = subprocess.run(
        ["git", "push", "--porcelain",
         "--receive-pack=git -c receive.denyCurrentBranch=updateInstead receive-pack",
         target, refspec], cwd=repo_path, env=env, capture_output=True, text=True,
        check=False, timeout=120)
    if proc.returncode == 0:
        return
    detail = " ".join((proc.stderr + " " + proc.stdout).split())[:500]
    if "[rejected]" in proc.stdout or "non-fast-forward" in detail or "fetch first" in detail:
        raise ConflictError(f"{where}: push rejected ({detail})", reason="PushRejected")
    if "working directory has" in detail.lower() or "could not update working tree" in \
            detail.lower():  # updateInstead's refusals: staged or unstaged changes
        raise PermanentError(f"{where}: the checkout at {target} has uncommitted changes; "
                             "commit or stash them, then try again", reason="CheckoutDirty")
    raise PermanentError(f"{where}: push to {target} failed ({detail})", reason="PushFailed")
