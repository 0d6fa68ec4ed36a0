"""Pull requests through a forge's REST API: GitHub, GitLab (merge requests), Gitea/Forgejo,
Bitbucket Cloud.

Operator settings, never the repository's (a committer must not choose where Conveyor sends
a token): ``CONVEYOR_FORGE`` (``github``, ``gitlab``, ``gitea``, ``bitbucket``; ``forgejo`` is
``gitea``), ``CONVEYOR_FORGE_API_URL`` (default ``https://api.github.com``,
``https://gitlab.com/api/v4``, ``https://api.bitbucket.org/2.0``, none for Gitea; GitHub
Enterprise is ``https://HOST/api/v3``), ``CONVEYOR_FORGE_TOKEN`` or
``CONVEYOR_FORGE_TOKEN_FILE`` (re-read at each request), ``CONVEYOR_FORGE_USERNAME`` (Bitbucket
only: with it the token is an app password / API token sent as HTTP Basic ``username:token``;
without it, a repository/workspace access token sent as ``Bearer``), and
``CONVEYOR_FORGE_REPO`` (``owner/name``, Bitbucket ``workspace/repo_slug``; default: the path of
the source URL without ``.git``).

Modules: ``forge_settings`` (``ForgeSettings``, token headers, the repository path),
``forge_client`` (``Forge``: the calls, rate limits, errors), ``forge_pulls`` (``PullLister``),
and one class per forge behind ``forge_api.ForgeApi`` with what differs between them
(``forge_github``: GitHub and Gitea/Forgejo, ``forge_gitlab``, ``forge_bitbucket``). Every name
stays importable from here.

The calls, from each forge's published REST reference:

- GitHub: ``POST /repos/{owner}/{repo}/pulls`` ``{title, head, base, body}`` -> 201
  ``{number, html_url}``; ``Authorization: Bearer``; ``X-GitHub-Api-Version: 2022-11-28``.
- GitLab: ``POST /projects/{url-encoded path}/merge_requests`` ``{source_branch,
  target_branch, title, description}`` -> 201 ``{iid, web_url}``; ``PRIVATE-TOKEN``.
- Gitea/Forgejo: ``POST /repos/{owner}/{repo}/pulls`` ``{head, base, title, body}`` -> 201
  ``{number, html_url}``; ``Authorization: token``.
- Bitbucket Cloud: ``POST /repositories/{workspace}/{repo_slug}/pullrequests`` ``{title,
  description, source: {branch: {name}}, destination: {branch: {name}},
  close_source_branch}`` -> 201 ``{id, links: {html: {href}}}``. Errors are
  ``{"type": "error", "error": {"message": ...}}``. Bitbucket Server / Data Center (another
  API, ``/rest/api/1.0``) is not supported.

Listing open pull requests (for the ``pullRequests`` environment generator):

- GitHub: ``GET /repos/{owner}/{repo}/pulls?state=open&per_page=100``, next page by the
  ``Link: <...>; rel="next"`` header; ``head.ref``, ``head.sha``, ``head.repo.full_name``
  (a fork when it is not the repository), ``base.ref``, ``labels[].name``, ``updated_at``.
- GitLab: ``GET /projects/{path}/merge_requests?state=opened&per_page=100&page=N``, next page
  by ``X-Next-Page``; ``iid``, ``source_branch``, ``sha``, ``target_branch``, ``labels`` (names),
  ``updated_at``, ``source_project_id`` vs ``target_project_id`` (a fork when they differ).
- Gitea/Forgejo: ``GET /repos/{owner}/{repo}/pulls?state=open&limit=50&page=N`` until a short
  page; fields as GitHub's.
- Bitbucket Cloud: ``GET /repositories/{ws}/{slug}/pullrequests?state=OPEN&pagelen=50``, a
  page ``{values, next}`` followed by its ``next`` URL; ``id``, ``source.branch.name``,
  ``source.commit.hash`` (Bitbucket gives 12 hex digits, not 40),
  ``source.repository.full_name`` (a fork when it is not the repository),
  ``destination.branch.name``, ``updated_on``. Bitbucket has no labels: a ``labels:`` filter
  selects no Bitbucket pull request.

Pull requests from forks are never listed: their head is not in the watched repository, and
deploying a stranger's branch is the operator's decision, not a generator's.

A rate-limited answer (429, or 403 with ``x-ratelimit-remaining: 0``) is
``TransientError(reason="RateLimited", delay=Retry-After or the reset time, else 60 s)``
(Bitbucket's 429 names neither: its limits are per rolling hour); refused
credentials are ``PermanentError("AuthenticationFailed")``; other refusals name the forge's
message. The token never appears in an error or a log, and goes only to the API's own scheme,
host and port: a next page (``Link`` or Bitbucket's ``next``) elsewhere is refused.
"""

from __future__ import annotations

from orchestrator.gitops.forge_bitbucket import BITBUCKET_STATES
from orchestrator.gitops.forge_client import (
    MAX_PAGES,
    TIMEOUT,
    Forge,
)
from orchestrator.gitops.forge_pulls import PullLister
from orchestrator.gitops.forge_settings import (
    DEFAULT_API,
    KINDS,
    ForgeSettings,
    PullRequest,
    repo_path,
)

__all__ = ["BITBUCKET_STATES", "DEFAULT_API", "KINDS", "MAX_PAGES", "TIMEOUT", "Forge",
           "ForgeSettings", "PullLister", "PullRequest", "repo_path"]
