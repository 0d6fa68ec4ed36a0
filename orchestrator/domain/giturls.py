"""Git URLs: parse every form git accepts, and reduce them to one key per repository.

A webhook names its repository by several URLs (``clone_url``, ``ssh_url``, ``html_url``...)
and conveyor.yaml names a source by one URL of the user's choosing. ``normalise`` maps all of
them to the same key, ``host[:port]/path``, so ``same_repository`` can match a push to sources:

    git@github.com:Org/Repo.git            -> github.com/org/repo
    ssh://git@github.com:22/org/repo.git   -> github.com/org/repo
    https://user:tok@github.com/org/repo/  -> github.com/org/repo
    git://github.com/org/repo.git          -> github.com/org/repo
    http://git.local:8080/team/app.git     -> git.local:8080/team/app
    /srv/git/app.git, file:///srv/git/app  -> /srv/git/app

Decisions:

- The **scheme and the credentials are dropped**: they say how to reach a repository, not which
  one it is. So are the default port of the scheme (22, 80, 443, 9418), a ``.git`` suffix,
  trailing slashes and ``/`` runs.
- The **path is lower-cased** as well as the host. GitHub, GitLab, Gitea/Forgejo and Bitbucket
  route owner and repository names case-insensitively, and webhooks report the canonical case
  while users type any case. On a case-sensitive server two repositories differing only by case
  would share a key; the cost of that false match is one extra fetch, whereas a missed match
  would silently ignore a push. Matching errs on the side of fetching.
- Non-default ports are kept: ``host:8443`` is a different server than ``host``.

``parse`` keeps everything (a password included, never shown by ``repr`` or ``display``).
This module is pure: no I/O.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = MappingProxyType({"ssh": 22, "git+ssh": 22, "ssh+git": 22, "http": 80, "https": 443,
                 "git": 9418})
REMOTE_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git", "http", "https", "git"})
# scp-like syntax: [user@]host:path, where the part before ':' holds no '/'.
_SCP = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<path>.*)$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True, slots=True)
class GitUrl:
    """A parsed git URL. ``scheme`` is ``ssh``, ``http``, ``https``, ``git``, ``file`` or
    ``local`` (a plain path); ``host`` is lower-case and empty for local repositories."""

    scheme: str
    host: str
    path: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    port: int | None = None
    scp: bool = False  # written as user@host:path

    @property
    def is_local(self) -> bool:
        """True for ``file://`` URLs and plain paths."""
        return self.scheme in ("file", "local")

    @property
    def is_ssh(self) -> bool:
        return self.scheme in ("ssh", "git+ssh", "ssh+git")

    @property
    def is_http(self) -> bool:
        return self.scheme in ("http", "https")

    def display(self) -> str:
        """The URL as written, minus any password: safe for logs, events and errors."""
        if self.scheme == "local":
            return self.path
        if self.scp:
            user = f"{self.user}@" if self.user else ""
            return f"{user}{self.host}:{self.path}"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}{port}{self.path}"

    def key(self) -> str:
        """The repository key (see the module docstring)."""
        raw = self.path.strip()
        if self.is_local:
            path = posixpath.normpath(raw).rstrip("/")
            return (path[:-4] if path.lower().endswith(".git") else path) or "/"
        path = posixpath.normpath("/" + raw).rstrip("/") if raw else ""
        path = "/" + path.lstrip("/") if path else ""
        if path.lower().endswith(".git"):
            path = path[:-4].rstrip("/")
        port = self.port if self.port not in (None, DEFAULT_PORTS.get(self.scheme)) else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"{host}:{port}" if port is not None else host
        return f"{where}{path}".lower()


def parse(url: str) -> GitUrl:
    """Parse any URL git accepts; raises ValueError for an empty or unusable one."""
    text = url.strip()
    if not text:
        raise ValueError("empty git URL")
    if _SCHEME.match(text):
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme == "file":
            return GitUrl(scheme="file", host="", path=unquote(parts.path) or "/")
        if scheme not in REMOTE_SCHEMES:
            raise ValueError(f"unsupported git URL scheme {scheme!r}")
        if not parts.hostname:
            raise ValueError("git URL without a host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("git URL with an invalid port") from None
        return GitUrl(
            scheme=scheme, host=parts.hostname.lower(), path=unquote(parts.path) or "/",
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            port=port,
        )
    match = _SCP.match(text)
    # "C:/x" would look scp-like; a one-letter host is a Windows drive, not a server.
    if match and not text.startswith(("/", "./", "../")) and len(match.group("host")) > 1:
        host = match.group("host").strip("[]").lower()
        return GitUrl(scheme="ssh", host=host, path=match.group("path"),
                      user=match.group("user"), scp=True)
    return GitUrl(scheme="local", host="", path=text)


def normalise(url: str) -> str:
    """The repository key of ``url``: ``host[:port]/path`` lower-case, or an absolute-looking
    path for local repositories. Raises ValueError for an unparseable URL."""
    return parse(url).key()


def redact(url: str) -> str:
    """``url`` without its password (and unchanged if it does not parse)."""
    try:
        return parse(url).display()
    except ValueError:
        return re.sub(r"//[^/@]*@", "//", url)


def same_repository(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name the same repository (see ``normalise``)."""
    try:
        return normalise(a) == normalise(b)
    except ValueError:
        return False
