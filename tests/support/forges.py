"""Contract servers for the forges' pull-request APIs, written from their published references.

Not mocks of Conveyor's client: each server implements the endpoint as the forge documents
it, and checks what the forge checks, so a client that only works against itself fails here:

- GitHub REST "Create a pull request" (docs.github.com/en/rest/pulls/pulls#create-a-pull-
  request): ``POST /repos/{owner}/{repo}/pulls`` with ``title``, ``head``, ``base`` (``body``
  optional); ``Authorization: Bearer|token``; 201 with ``number``, ``html_url``, ``state:
  open``, ``head.ref/sha``; 401 ``Bad credentials``; 422 ``Validation Failed`` for a missing
  field or a head branch the repository does not have, and "A pull request already exists"
  for a second open one; rate limits as 403 with ``x-ratelimit-remaining: 0`` and
  ``x-ratelimit-reset`` (primary) or 429 with ``retry-after`` (secondary). ``GET .../pulls``
  pages with ``per_page``/``page`` and a ``Link`` header.
- GitLab "Create MR" (docs.gitlab.com/api/merge_requests/#create-mr): ``POST /api/v4/projects/
  :id/merge_requests`` (``:id`` the URL-encoded path), ``source_branch``, ``target_branch``,
  ``title`` required; ``PRIVATE-TOKEN`` or ``Authorization: Bearer``; 201 with ``iid``,
  ``web_url``, ``state: opened``; 401 ``401 Unauthorized``; 409 for an existing open MR of
  the source branch; 400 ``{"error": "title is missing"}``; 429 with ``Retry-After``.
- Gitea/Forgejo "Create a pull request" (the swagger at /api/swagger): ``POST /api/v1/repos/
  {owner}/{repo}/pulls`` with ``head``, ``base``, ``title``; ``Authorization: token``;
  201 with ``number``, ``html_url``; 401; 409 for an existing one; 422 for a bad branch.
  Issue comments (``GET|POST .../issues/{index}/comments``, ``PATCH .../issues/comments/{id}``,
  paged with ``page``/``limit`` (at most 50), ``Link`` and ``X-Total-Count``) and commit
  statuses (``POST .../statuses/{sha}``, states pending, success, error, failure, warning)
  have GitHub's shapes under ``/api/v1``.
- Bitbucket Cloud REST 2.0 (developer.atlassian.com/cloud/bitbucket/rest/: "Pullrequests",
  "Commit statuses"; webhooks: support.atlassian.com/bitbucket-cloud/docs/event-payloads/),
  under ``/2.0``: ``POST /repositories/{workspace}/{repo_slug}/pullrequests`` with ``title``
  and ``source.branch.name`` (``destination.branch.name`` optional: the main branch) -> 201
  with ``id`` and ``links.html.href`` (posting again for an open pull request of the same
  source branch updates it: 200); ``GET .../pullrequests?state=OPEN`` pages of ``{size, page,
  pagelen (at most 50), next, values}``, ``source.commit.hash`` as 12 hex digits;
  ``GET|POST .../pullrequests/{id}/comments`` (``content.raw``; pagelen at most 100) and
  ``PUT .../comments/{comment_id}``; ``POST .../commit/{node}/statuses/build`` with ``key``,
  ``state`` (SUCCESSFUL, FAILED, INPROGRESS, STOPPED) and ``url`` required, one status per key
  (posted again: overwritten; ``refname``, the source branch, ties it to the pull request).
  Errors ``{"type": "error", "error": {"message": ...}}``;
  credentials ``Authorization: Basic user:app-password`` or ``Bearer <access token>``, 401
  otherwise; rate limits as 429 "Rate limit for this resource has been exceeded" with the
  ``X-RateLimit-*`` headers and no ``Retry-After`` (the limit is per rolling hour).

Branches are checked against the served bare repositories (``<root>/<name>.git``).
"""

from __future__ import annotations

import base64
import re
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from tests.support.gitservers import free_port, git_env

KINDS = ("github", "gitlab", "gitea", "bitbucket")


@dataclass
class Opened:
    """A pull request the server holds."""

    repo: str
    number: int
    title: str
    head: str
    base: str
    body: str
    sha: str
    state: str = "open"
    labels: list[str] = field(default_factory=list)
    updated_at: str = "2026-12-01T10:00:00Z"
    fork: bool = False


@dataclass
class Comment:
    id: int
    number: int  # the pull request (an issue, to GitHub's comments API)
    body: str
    edits: int = 0
    deleted: bool = False  # Bitbucket keeps deleted comments in the listing


@dataclass
class ForgeServer:
    kind: str
    root: Path
    token: str
    port: int = 0
    pulls: list[Opened] = field(default_factory=list)
    rate_limited: int = 0  # answer this many requests with a rate-limit response first
    comments: list[Comment] = field(default_factory=list)
    statuses: list[dict[str, str]] = field(default_factory=list)  # with "sha"
    requests: int = 0
    username: str = "conveyor-bot"  # Bitbucket: the account of an app password
    status_refnames: list[str] = field(default_factory=list)  # Bitbucket: the PR's branch
    _runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return {"github": self.url, "gitlab": f"{self.url}/api/v4",
                "gitea": f"{self.url}/api/v1", "bitbucket": f"{self.url}/2.0"}[self.kind]

    async def start(self) -> None:
        app = web.Application()
        if self.kind == "github":
            app.router.add_post("/repos/{owner}/{repo}/pulls", self._github_create)
            app.router.add_get("/repos/{owner}/{repo}/pulls", self._github_list)
        elif self.kind == "gitlab":
            app.router.add_post("/api/v4/projects/{id}/merge_requests", self._gitlab_create)
            notes = "/api/v4/projects/{id}/merge_requests/{number}/notes"
            app.router.add_get(notes, self._gitlab_notes)
            app.router.add_post(notes, self._gitlab_note)
            app.router.add_get("/api/v4/projects/{id}/merge_requests", self._gitlab_list)
            app.router.add_put(notes + "/{note}", self._gitlab_edit)
            app.router.add_post("/api/v4/projects/{id}/statuses/{sha}", self._gitlab_status)
        elif self.kind == "bitbucket":
            repo = "/2.0/repositories/{owner}/{repo}"
            app.router.add_post(repo + "/pullrequests", self._bitbucket_create)
            app.router.add_get(repo + "/pullrequests", self._bitbucket_list)
            comments = repo + "/pullrequests/{number}/comments"
            app.router.add_get(comments, self._bitbucket_comments)
            app.router.add_post(comments, self._bitbucket_comment)
            app.router.add_put(comments + "/{id}", self._bitbucket_edit)
            app.router.add_post(repo + "/commit/{sha}/statuses/build", self._bitbucket_status)
        else:
            app.router.add_post("/api/v1/repos/{owner}/{repo}/pulls", self._gitea_create)
            app.router.add_get("/api/v1/repos/{owner}/{repo}/pulls", self._gitea_list)
        if self.kind in ("github", "gitea"):  # Gitea's comments and statuses follow GitHub's
            api = "" if self.kind == "github" else "/api/v1"
            app.router.add_get(api + "/repos/{owner}/{repo}/issues/{number}/comments",
                               self._github_comments)
            app.router.add_post(api + "/repos/{owner}/{repo}/issues/{number}/comments",
                                self._github_comment)
            app.router.add_patch(api + "/repos/{owner}/{repo}/issues/comments/{id}",
                                 self._github_edit)
            app.router.add_post(api + "/repos/{owner}/{repo}/statuses/{sha}",
                                self._github_status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # ------------------------------------------------------------------ shared checks

    def _branch_sha(self, repo: str, branch: str) -> str | None:
        bare = self.root / f"{repo.split('/')[-1]}.git"
        proc = subprocess.run(["git", "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
                              cwd=bare, env=git_env(), capture_output=True, text=True,
                              check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def _token_of(self, request: web.Request) -> str:
        if self.kind == "gitlab" and "PRIVATE-TOKEN" in request.headers:
            return request.headers["PRIVATE-TOKEN"]
        kind, _, value = request.headers.get("Authorization", "").partition(" ")
        if self.kind == "bitbucket" and kind.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return ""
            return password if user == self.username else ""
        allowed = {"github": ("bearer", "token"), "gitlab": ("bearer",), "gitea": ("token",
                                                                                  "bearer"),
                   "bitbucket": ("bearer",)}
        return value if kind.lower() in allowed[self.kind] else ""

    def _rate_limit(self) -> web.Response | None:
        if self.rate_limited <= 0:
            return None
        self.rate_limited -= 1
        if self.kind == "github":
            return web.json_response(
                {"message": "API rate limit exceeded for user ID 1.",
                 "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-"
                                      "the-rest-api"}, status=403,
                headers={"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0",
                         "x-ratelimit-used": "5000",
                         "x-ratelimit-reset": str(int(time.time()) + 42)})
        if self.kind == "bitbucket":
            return web.Response(text="Rate limit for this resource has been exceeded",
                                status=429, headers={"X-RateLimit-Limit": "1000",
                                                     "X-RateLimit-Resource": "api",
                                                     "X-RateLimit-NearLimit": "true"})
        return web.json_response({"message": "429 Too Many Requests"}, status=429,
                                 headers={"Retry-After": "7"})

    async def _json(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _open(self, repo: str, title: str, head: str, base: str, body: str,
              sha: str) -> Opened:
        pr = Opened(repo, len([p for p in self.pulls if p.repo == repo]) + 1, title, head,
                    base, body, sha)
        self.pulls.append(pr)
        return pr

    def _existing(self, repo: str, head: str, base: str) -> Opened | None:
        return next((p for p in self.pulls if p.repo == repo and p.head == head
                     and p.base == base and p.state == "open"), None)

    # ------------------------------------------------------------------ GitHub

    def _github_pr(self, pr: Opened) -> dict[str, Any]:
        api = f"{self.url}/repos/{pr.repo}/pulls/{pr.number}"
        return {"id": 1000 + pr.number, "number": pr.number, "state": pr.state,
                "title": pr.title, "body": pr.body, "url": api,
                "html_url": f"https://github.example/{pr.repo}/pull/{pr.number}",
                "head": {"ref": pr.head, "sha": pr.sha,
                         "repo": {"full_name": f"fork/{pr.repo}" if pr.fork else pr.repo}},
                "base": {"ref": pr.base}, "labels": [{"name": n} for n in pr.labels],
                "updated_at": pr.updated_at}

    def _open_of(self, repo: str) -> list[Opened]:
        return [p for p in self.pulls if p.repo == repo and p.state == "open"]

    def _listing(self, request: web.Request) -> web.Response | None:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "Bad credentials"}, status=401)
        return self._rate_limit()

    async def _github_create(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "Bad credentials", "documentation_url":
                                      "https://docs.github.com/rest", "status": "401"},
                                     status=401)
        limited = self._rate_limit()
        if limited is not None:
            return limited
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        body = await self._json(request)
        if body is None:
            return web.json_response({"message": "Problems parsing JSON"}, status=400)
        missing = [k for k in ("head", "base") if not isinstance(body.get(k), str)]
        if not isinstance(body.get("title"), str) and "issue" not in body:
            missing.append("title")
        if missing:
            return web.json_response({"message": "Validation Failed", "errors": [
                {"resource": "PullRequest", "field": k, "code": "missing_field"}
                for k in missing]}, status=422)
        head, base = str(body["head"]).split(":")[-1], str(body["base"])
        sha = self._branch_sha(repo, head)
        invalid = [k for k, b in (("head", head), ("base", base))
                   if self._branch_sha(repo, b) is None]
        if invalid:
            return web.json_response({"message": "Validation Failed", "errors": [
                {"resource": "PullRequest", "field": k, "code": "invalid"} for k in invalid]},
                status=422)
        if self._existing(repo, head, base) is not None:
            owner = repo.split("/")[0]
            return web.json_response({"message": "Validation Failed", "errors": [
                {"resource": "PullRequest", "code": "custom",
                 "message": f"A pull request already exists for {owner}:{head}."}]},
                status=422)
        assert sha is not None
        pr = self._open(repo, str(body["title"]), head, base, str(body.get("body") or ""), sha)
        return web.json_response(self._github_pr(pr), status=201)

    async def _github_list(self, request: web.Request) -> web.Response:
        refused = self._listing(request)
        if refused is not None:
            return refused
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        per_page = min(100, int(request.query.get("per_page", 30)))
        page = max(1, int(request.query.get("page", 1)))
        mine = [p for p in self.pulls if p.repo == repo
                and request.query.get("state", "open") in (p.state, "all")]
        chunk = mine[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(mine):
            nxt = (f"{self.url}/repos/{repo}/pulls?state={request.query.get('state', 'open')}"
                   f"&per_page={per_page}&page={page + 1}")
            headers["Link"] = f'<{nxt}>; rel="next"'
        return web.json_response([self._github_pr(p) for p in chunk], headers=headers)

    # GitHub "Issue comments" (docs.github.com/en/rest/issues/comments) and "Commit
    # statuses" (docs.github.com/en/rest/commits/statuses): a pull request's comments are its
    # issue's; statuses take state error|failure|pending|success and a context.

    def _comment_json(self, c: Comment) -> dict[str, Any]:
        return {"id": c.id, "body": c.body, "user": {"login": "conveyor[bot]"},
                "html_url": f"https://github.example/pull/{c.number}#issuecomment-{c.id}"}

    async def _github_comments(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "Bad credentials"}, status=401)
        number = int(request.match_info["number"])
        # GitHub pages with per_page (max 100), Gitea with limit (its MAX_RESPONSE_ITEMS, 50)
        size_key = "per_page" if self.kind == "github" else "limit"
        per_page = min(100 if self.kind == "github" else 50,
                       int(request.query.get(size_key, 30)))
        page = max(1, int(request.query.get("page", 1)))
        mine = [c for c in self.comments if c.number == number]
        chunk = mine[(page - 1) * per_page: page * per_page]
        headers = {"X-Total-Count": str(len(mine))} if self.kind == "gitea" else {}
        if page * per_page < len(mine):
            base = f"{self.url}{request.raw_path.split('?')[0]}"
            headers["Link"] = (f'<{base}?{size_key}={per_page}&page={page + 1}>; rel="next", '
                               f'<{base}?{size_key}={per_page}&page='
                               f'{(len(mine) + per_page - 1) // per_page}>; rel="last"')
        return web.json_response([self._comment_json(c) for c in chunk], headers=headers)

    async def _github_comment(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "Bad credentials"}, status=401)
        body = await self._json(request)
        if body is None or not isinstance(body.get("body"), str):
            return web.json_response({"message": "Validation Failed", "errors": [
                {"resource": "IssueComment", "field": "body", "code": "missing_field"}]},
                status=422)
        if len(body["body"]) > 65536:
            return web.json_response({"message": "Validation Failed", "errors": [
                {"resource": "IssueComment", "field": "body", "code": "custom",
                 "message": "body is too long (maximum is 65536 characters)"}]}, status=422)
        comment = Comment(900 + len(self.comments), int(request.match_info["number"]),
                          body["body"])
        self.comments.append(comment)
        return web.json_response(self._comment_json(comment), status=201)

    async def _github_edit(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "Bad credentials"}, status=401)
        found = next((c for c in self.comments if c.id == int(request.match_info["id"])), None)
        body = await self._json(request)
        if found is None:
            return web.json_response({"message": "Not Found"}, status=404)
        if body is None or not isinstance(body.get("body"), str):
            return web.json_response({"message": "Validation Failed"}, status=422)
        found.body, found.edits = body["body"], found.edits + 1
        return web.json_response(self._comment_json(found))

    async def _github_status(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "Bad credentials"}, status=401)
        body = await self._json(request)
        state = (body or {}).get("state")
        states = ("error", "failure", "pending", "success") + (
            ("warning",) if self.kind == "gitea" else ())
        if state not in states:
            return web.json_response({"message": "Validation Failed", "errors": [
                {"resource": "Status", "field": "state", "code": "custom"}]}, status=422)
        assert body is not None
        entry = {"sha": request.match_info["sha"], "state": str(state),
                 "context": str(body.get("context") or "default"),
                 "description": str(body.get("description") or "")}
        self.statuses.append(entry)
        return web.json_response({**entry, "id": len(self.statuses)}, status=201)

    # ------------------------------------------------------------------ GitLab

    async def _gitlab_list(self, request: web.Request) -> web.Response:
        refused = self._listing(request)
        if refused is not None:
            return refused
        repo = urllib.parse.unquote(request.match_info["id"])
        per_page = min(100, int(request.query.get("per_page", 20)))
        page = max(1, int(request.query.get("page", 1)))
        mine = self._open_of(repo) if request.query.get("state") == "opened" else \
            [p for p in self.pulls if p.repo == repo]
        chunk = mine[(page - 1) * per_page: page * per_page]
        headers = {"X-Next-Page": str(page + 1) if page * per_page < len(mine) else "",
                   "X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(len(mine))}
        return web.json_response([{
            "id": 5000 + p.number, "iid": p.number, "state": "opened", "title": p.title,
            "source_branch": p.head, "target_branch": p.base, "sha": p.sha,
            "labels": p.labels, "updated_at": p.updated_at,
            "source_project_id": 2 if p.fork else 1, "target_project_id": 1} for p in chunk],
            headers=headers)

    async def _gitlab_create(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        limited = self._rate_limit()
        if limited is not None:
            return limited
        repo = urllib.parse.unquote(request.match_info["id"])
        body = await self._json(request)
        if body is None:
            return web.json_response({"error": "body is invalid"}, status=400)
        for key in ("source_branch", "target_branch", "title"):
            if not isinstance(body.get(key), str) or not body[key]:
                return web.json_response({"error": f"{key} is missing"}, status=400)
        head, base = str(body["source_branch"]), str(body["target_branch"])
        sha = self._branch_sha(repo, head)
        if sha is None or self._branch_sha(repo, base) is None:
            return web.json_response({"message": ["Source branch does not exist"
                                                  if sha is None else
                                                  "Target branch does not exist"]},
                                     status=422)
        found = self._existing(repo, head, base)
        if found is not None:
            return web.json_response({"message": ["Another open merge request already exists "
                                                  f"for this source branch: !{found.number}"]},
                                     status=409)
        pr = self._open(repo, str(body["title"]), head, base,
                        str(body.get("description") or ""), sha)
        return web.json_response({
            "id": 5000 + pr.number, "iid": pr.number, "state": "opened", "title": pr.title,
            "description": pr.body, "source_branch": head, "target_branch": base, "sha": sha,
            "web_url": f"https://gitlab.example/{repo}/-/merge_requests/{pr.number}"},
            status=201)

    # GitLab "Notes" (docs.gitlab.com/api/notes/#merge-requests): GET|POST
    # /projects/:id/merge_requests/:iid/notes, PUT .../notes/:note_id; paged with per_page and
    # page, X-Next-Page and Link. "Commits" statuses (docs.gitlab.com/api/commits/#set-the-
    # pipeline-status-of-a-commit): POST /projects/:id/statuses/:sha with state pending,
    # running, success, failed or canceled and a name.

    async def _gitlab_notes(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        number = int(request.match_info["number"])
        per_page = min(100, int(request.query.get("per_page", 20)))
        page = max(1, int(request.query.get("page", 1)))
        mine = [c for c in self.comments if c.number == number]
        chunk = mine[(page - 1) * per_page: page * per_page]
        headers = {"X-Total": str(len(mine)), "X-Page": str(page), "X-Next-Page": ""}
        if page * per_page < len(mine):
            headers["X-Next-Page"] = str(page + 1)
            path = request.raw_path.split("?")[0]  # as requested: the project's %2F kept
            headers["Link"] = (f'<{self.url}{path}?page={page + 1}&per_page={per_page}>;'
                               ' rel="next"')
        return web.json_response([{"id": c.id, "body": c.body, "noteable_iid": c.number,
                                   "author": {"username": "conveyor"}} for c in chunk],
                                 headers=headers)

    async def _gitlab_note(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        body = await self._json(request)
        if body is None or not isinstance(body.get("body"), str) or not body["body"]:
            return web.json_response({"error": "body is missing"}, status=400)
        note = Comment(3000 + len(self.comments), int(request.match_info["number"]),
                       body["body"])
        self.comments.append(note)
        return web.json_response({"id": note.id, "body": note.body,
                                  "noteable_iid": note.number}, status=201)

    async def _gitlab_edit(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        found = next((c for c in self.comments if c.id == int(request.match_info["note"])
                      and c.number == int(request.match_info["number"])), None)
        body = await self._json(request)
        if found is None:
            return web.json_response({"message": "404 Not found"}, status=404)
        if body is None or not isinstance(body.get("body"), str):
            return web.json_response({"error": "body is missing"}, status=400)
        found.body, found.edits = body["body"], found.edits + 1
        return web.json_response({"id": found.id, "body": found.body})

    async def _gitlab_status(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        body = await self._json(request) or {}
        state = body.get("state")
        if state not in ("pending", "running", "success", "failed", "canceled"):
            return web.json_response({"error": "state does not have a valid value"},
                                     status=400)
        entry = {"sha": request.match_info["sha"], "state": str(state),
                 "context": str(body.get("name") or "default"),
                 "description": str(body.get("description") or "")}
        self.statuses.append(entry)
        return web.json_response({**entry, "id": len(self.statuses)}, status=201)

    # ------------------------------------------------------------------ Gitea / Forgejo

    async def _gitea_list(self, request: web.Request) -> web.Response:
        refused = self._listing(request)
        if refused is not None:
            return refused
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        limit = min(50, int(request.query.get("limit", 30)))
        page = max(1, int(request.query.get("page", 1)))
        chunk = self._open_of(repo)[(page - 1) * limit: page * limit]
        return web.json_response([self._github_pr(p) for p in chunk])

    async def _gitea_create(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self._token_of(request) != self.token:
            return web.json_response({"message": "user does not exist [uid: 0, name: ]",
                                      "url": f"{self.url}/api/swagger"}, status=401)
        limited = self._rate_limit()
        if limited is not None:
            return limited
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        body = await self._json(request)
        if body is None or not all(isinstance(body.get(k), str) and body[k]
                                   for k in ("head", "base", "title")):
            return web.json_response({"message": "[Head Base Title]: Required",
                                      "url": f"{self.url}/api/swagger"}, status=422)
        head, base = str(body["head"]), str(body["base"])
        sha = self._branch_sha(repo, head)
        if sha is None or self._branch_sha(repo, base) is None:
            return web.json_response({"message": "branch does not exist"}, status=404)
        if self._existing(repo, head, base) is not None:
            return web.json_response({"message": "pull request already exists for these "
                                      "targets"}, status=409)
        pr = self._open(repo, str(body["title"]), head, base, str(body.get("body") or ""), sha)
        return web.json_response({
            "id": 7000 + pr.number, "number": pr.number, "state": "open", "title": pr.title,
            "body": pr.body, "html_url": f"https://gitea.example/{repo}/pulls/{pr.number}",
            "head": {"ref": head, "sha": sha}, "base": {"ref": base}}, status=201)

    # ------------------------------------------------------------------ Bitbucket Cloud

    @staticmethod
    def _bitbucket_error(message: str, status: int, **fields: list[str]) -> web.Response:
        error: dict[str, Any] = {"message": message}
        if fields:
            error["fields"] = fields
        return web.json_response({"type": "error", "error": error}, status=status)

    def _bitbucket_refused(self, request: web.Request) -> web.Response | None:
        self.requests += 1
        if self._token_of(request) != self.token:
            return self._bitbucket_error("Unauthorized", 401)
        return self._rate_limit()

    def _bitbucket_pr(self, pr: Opened) -> dict[str, Any]:
        repo = {"type": "repository", "full_name": f"fork/{pr.repo}" if pr.fork else pr.repo}
        return {"type": "pullrequest", "id": pr.number, "title": pr.title,
                "description": pr.body, "state": pr.state.upper(),
                "source": {"branch": {"name": pr.head}, "commit": {"hash": pr.sha[:12]},
                           "repository": repo},
                "destination": {"branch": {"name": pr.base},
                                "repository": {"type": "repository", "full_name": pr.repo}},
                "updated_on": pr.updated_at.replace("Z", "+00:00"),
                "links": {"html": {"href": f"https://bitbucket.example/{pr.repo}/pull-requests/"
                                           f"{pr.number}"}}}

    def _bitbucket_page(self, request: web.Request, items: list[dict[str, Any]],
                        most: int) -> web.Response:
        """A paginated answer: ``pagelen`` (default 10, at most ``most``), ``page``, and
        ``next`` (the same URL with page+1) while more remain."""
        pagelen = max(1, min(most, int(request.query.get("pagelen", 10))))
        page = max(1, int(request.query.get("page", 1)))
        chunk = items[(page - 1) * pagelen: page * pagelen]
        out: dict[str, Any] = {"size": len(items), "page": page, "pagelen": pagelen,
                               "values": chunk}
        if page * pagelen < len(items):
            query = {**request.query, "page": str(page + 1)}
            out["next"] = (f"{self.url}{request.path}?"
                           f"{urllib.parse.urlencode(query)}")
        return web.json_response(out)

    async def _bitbucket_create(self, request: web.Request) -> web.Response:
        refused = self._bitbucket_refused(request)
        if refused is not None:
            return refused
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        body = await self._json(request)
        if body is None:
            return self._bitbucket_error("Bad request", 400)
        source = ((body.get("source") or {}).get("branch") or {}).get("name")
        base = ((body.get("destination") or {}).get("branch") or {}).get("name") or "main"
        if not isinstance(body.get("title"), str) or not body["title"]:
            return self._bitbucket_error("title: This field is required.", 400,
                                         title=["This field is required."])
        if not isinstance(source, str) or self._branch_sha(repo, source) is None:
            return self._bitbucket_error("source: Branch not found", 400,
                                         source=["Branch not found"])
        if self._branch_sha(repo, str(base)) is None:
            return self._bitbucket_error("destination: Branch not found", 400,
                                         destination=["Branch not found"])
        sha = self._branch_sha(repo, source)
        assert sha is not None
        found = self._existing(repo, source, str(base))
        if found is not None:  # Bitbucket updates the open one
            found.title, found.body = str(body["title"]), str(body.get("description") or "")
            return web.json_response(self._bitbucket_pr(found))
        pr = self._open(repo, str(body["title"]), source, str(base),
                        str(body.get("description") or ""), sha)
        return web.json_response(self._bitbucket_pr(pr), status=201)

    async def _bitbucket_list(self, request: web.Request) -> web.Response:
        refused = self._bitbucket_refused(request)
        if refused is not None:
            return refused
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        state = request.query.get("state", "OPEN").lower()
        mine = [self._bitbucket_pr(p) for p in self.pulls if p.repo == repo
                and p.state == state]
        return self._bitbucket_page(request, mine, 50)

    def _bitbucket_comment_json(self, c: Comment) -> dict[str, Any]:
        return {"type": "pullrequest_comment", "id": c.id, "deleted": c.deleted,
                "content": {"type": "rendered", "raw": c.body, "markup": "markdown",
                            "html": f"<p>{c.body}</p>"},
                "pullrequest": {"type": "pullrequest", "id": c.number},
                "user": {"type": "user", "display_name": "Conveyor"}}

    async def _bitbucket_comments(self, request: web.Request) -> web.Response:
        refused = self._bitbucket_refused(request)
        if refused is not None:
            return refused
        number = int(request.match_info["number"])
        mine = [self._bitbucket_comment_json(c) for c in self.comments if c.number == number]
        return self._bitbucket_page(request, mine, 100)

    async def _bitbucket_comment(self, request: web.Request) -> web.Response:
        refused = self._bitbucket_refused(request)
        if refused is not None:
            return refused
        body = await self._json(request)
        raw = ((body or {}).get("content") or {}).get("raw")
        if not isinstance(raw, str) or not raw:
            return self._bitbucket_error("content: This field is required.", 400,
                                         content=["This field is required."])
        comment = Comment(600 + len(self.comments), int(request.match_info["number"]), raw)
        self.comments.append(comment)
        return web.json_response(self._bitbucket_comment_json(comment), status=201)

    async def _bitbucket_edit(self, request: web.Request) -> web.Response:
        refused = self._bitbucket_refused(request)
        if refused is not None:
            return refused
        found = next((c for c in self.comments if c.id == int(request.match_info["id"])
                      and c.number == int(request.match_info["number"])), None)
        if found is None:
            return self._bitbucket_error("No Comment matches the given query.", 404)
        body = await self._json(request)
        raw = ((body or {}).get("content") or {}).get("raw")
        if not isinstance(raw, str) or not raw:
            return self._bitbucket_error("content: This field is required.", 400)
        found.body, found.edits = raw, found.edits + 1
        return web.json_response(self._bitbucket_comment_json(found))

    async def _bitbucket_status(self, request: web.Request) -> web.Response:
        refused = self._bitbucket_refused(request)
        if refused is not None:
            return refused
        body = await self._json(request) or {}
        missing = {k: ["This field is required."] for k in ("key", "state", "url")
                   if not body.get(k)}
        if missing:
            return self._bitbucket_error(f"{', '.join(missing)}: This field is required.", 400,
                                         **missing)
        if body["state"] not in ("SUCCESSFUL", "FAILED", "INPROGRESS", "STOPPED"):
            return self._bitbucket_error(f"state: {body['state']!r} is not a valid choice.",
                                         400, state=["not a valid choice"])
        sha = request.match_info["sha"]
        if not re.fullmatch(r"[0-9a-f]{7,40}", sha):
            return self._bitbucket_error(f"Commit not found: {sha}", 404)
        entry = {"sha": sha, "state": str(body["state"]), "context": str(body["key"]),
                 "description": str(body.get("description") or "")}
        # one status per key of a commit: posting it again overwrites it
        self.statuses[:] = [s for s in self.statuses
                            if (s["sha"], s["context"]) != (sha, entry["context"])]
        self.statuses.append(entry)
        # only a status whose refname is the source branch shows on the pull request
        self.status_refnames.append(str(body.get("refname") or ""))
        return web.json_response({"type": "commitstatus", **entry, "key": entry["context"],
                                  "url": str(body["url"])}, status=201)
