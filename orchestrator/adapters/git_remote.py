"""Git sources over the network: a local bare mirror per source, fetched with pygit2.

``GitMirror`` keeps ``<cache_dir>/<source>-<hash>.git``, a bare repository holding the branches
Conveyor watches (``refs/heads/<branch>``, pruned when the remote deletes them). Every pygit2
call runs in a worker thread (``asyncio.to_thread``) with its own ``Repository`` object, because
libgit2 objects are not thread-safe and fetches release the GIL. Fetches of one mirror are
serialised by an ``asyncio.Lock``.

Transports: ``ssh://`` and ``user@host:path``, ``https://``/``http://`` (smart HTTP),
``git://``, ``file://`` (fetched like a remote). A plain local path is opened directly, with no
copy: its branches are read in place.

Credentials (conveyor.yaml ``sources.<name>.credentials``). Secrets are read only from the
environment (``${VAR}``, nothing else allowed in that field) or from files (Kubernetes secret
mounts, re-read at every fetch so a rotated secret is picked up):

    credentials:
      username: deploy                   # HTTP user / SSH user when the URL names none
      password: ${GIT_PASSWORD}          # or passwordFile: /var/run/secrets/git/password
      token: ${GIT_TOKEN}                # or tokenFile: /var/run/secrets/git/token
      tokenAuth: basic                   # basic (default): user 'x-access-token' unless
                                         #   username is set; bearer: 'Authorization: Bearer'
      sshKeyFile: /var/run/secrets/git/id_ed25519   # or sshKey: ${GIT_SSH_KEY} (key text)
      sshPublicKeyFile: ...              # optional; derived from the private key if absent
      sshPassphrase: ${GIT_SSH_PASSPHRASE}          # or sshPassphraseFile: path
      knownHostsFile: /var/run/secrets/git/known_hosts   # or knownHosts: | (inline lines)

SSH host keys are checked strictly: the server's key must be in the source's known_hosts
(``knownHosts``/``knownHostsFile``; without either, the process's ``~/.ssh/known_hosts``).
pygit2 1.21 gives the ``certificate_check`` callback no key to compare, and pygit2's default
callback accepts *any* SSH host key; libgit2 itself checks ``$HOME/.ssh/known_hosts`` and
reports the result as ``valid``. So an SSH fetch points libgit2's home directory
(``pygit2.settings.homedir``, process-wide) at a private directory holding the source's
known_hosts and refuses the connection unless ``valid``. The home directory being global, SSH
fetches hold a process-wide lock while they run (other transports do not).

Timeouts (``connect_timeout``, ``timeout``) set libgit2's process-wide
``server_connect_timeout``/``server_timeout``; the last ``GitMirror`` created wins.

Errors are translated here: refused credentials -> ``PermanentError(reason=
"AuthenticationFailed")``; unknown or changed SSH host key -> ``PermanentError("HostKeyUnknown")``;
untrusted TLS certificate -> ``PermanentError("CertificateInvalid")``; missing repository ->
``PermanentError("RepositoryNotFound")``; refused, unreachable or timed out ->
``TransientError("Unreachable")``. Messages name the source and the URL without its password,
and every configured secret is scrubbed from them. No retries happen here: a fetch is one
attempt, and the caller's ``nak(delay)`` is the retry layer.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2
import structlog

from orchestrator.domain.config import SourceConfig
from orchestrator.domain.giturls import GitUrl, parse
from orchestrator.errors import ConflictError, ConveyorError, PermanentError, TransientError
from orchestrator.secrets import SecretScope

log = structlog.get_logger(__name__)

_ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
_HOMEDIR_LOCK = threading.Lock()
CREDENTIAL_KEYS = frozenset({
    "username", "password", "passwordFile", "token", "tokenFile", "tokenAuth", "sshKey",
    "sshKeyFile", "sshPublicKeyFile", "sshPassphrase", "sshPassphraseFile", "knownHosts",
    "knownHostsFile",
})


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class Credentials:
    """Resolved credentials of one source. Secret fields never appear in ``repr``."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    bearer: str | None = field(default=None, repr=False)
    ssh_key_file: Path | None = None
    ssh_key: str | None = field(default=None, repr=False)
    ssh_public_key_file: Path | None = None
    ssh_passphrase: str | None = field(default=None, repr=False)
    known_hosts: str | None = None

    @property
    def has_ssh_key(self) -> bool:
        return self.ssh_key_file is not None or self.ssh_key is not None

    def secrets(self) -> list[str]:
        """Every secret value, to scrub from messages."""
        values = [self.password, self.bearer, self.ssh_key, self.ssh_passphrase]
        return [v for v in values if v]


def _secret(raw: Mapping[str, Any], key: str, scope: SecretScope, source: str) -> str | None:
    """``key`` (a ``${VAR}`` reference) or ``keyFile`` (a path); never a literal secret."""
    inline, path = raw.get(key), raw.get(f"{key}File")
    if inline is not None and path is not None:
        raise PermanentError(f"source {source!r}: credentials.{key} and {key}File are both "
                             "set; keep one", reason="InvalidCredentials")
    if inline is not None:
        if not isinstance(inline, str) or not _ENV_REF.match(inline.strip()):
            raise PermanentError(
                f"source {source!r}: credentials.{key} must be an environment reference like "
                f"${{GIT_{key.upper()}}}, or use {key}File; secrets are never written in "
                "conveyor.yaml", reason="InvalidCredentials")
        value: str = _in_source(source, lambda: scope.expand(inline.strip()))
        return value
    if path is not None:
        return _read_file(path, f"{key}File", scope, source).rstrip("\r\n")
    return None


def _in_source(source: str, get: Any) -> Any:
    """``get()``, its refusal (a reference out of the scope) naming the source."""
    try:
        return get()
    except PermanentError as exc:
        raise PermanentError(f"source {source!r}: credentials: {exc.message}",
                             reason="InvalidCredentials") from None


def _file_path(path: Any, key: str, scope: SecretScope, source: str) -> Path:
    if not isinstance(path, str) or not path.strip():
        raise PermanentError(f"source {source!r}: credentials.{key} must be a file path",
                             reason="InvalidCredentials")
    found: Path = _in_source(source, lambda: scope.path(path, f"credentials.{key}"))
    return found


def _read_file(path: Any, key: str, scope: SecretScope, source: str) -> str:
    resolved = _file_path(path, key, scope, source)
    try:
        return resolved.read_text()
    except OSError as exc:
        raise PermanentError(f"source {source!r}: cannot read credentials.{key} "
                             f"{resolved}: {exc.strerror}", reason="InvalidCredentials") from None


def scope_for(environ: Mapping[str, str] | None,
              scope: SecretScope | None) -> SecretScope:
    """``scope``; else an explicit ``environ`` (the caller's own, unrestricted); else nothing:
    a reference reaches only what a scope was given for."""
    if scope is not None:
        return scope
    return SecretScope.operator(environ) if environ is not None else SecretScope({}, ())


def load_credentials(raw: Mapping[str, Any] | None, *, source: str = "default",
                     environ: Mapping[str, str] | None = None,
                     scope: SecretScope | None = None) -> Credentials:
    """Resolve a ``credentials:`` mapping (see the module docstring) from env and files,
    reaching only what ``scope`` allows (``orchestrator.secrets``)."""
    if not raw:
        return Credentials()
    reach = scope_for(environ, scope)
    unknown = set(raw) - CREDENTIAL_KEYS
    if unknown:
        raise PermanentError(f"source {source!r}: unknown credentials key(s) "
                             f"{sorted(unknown)} (known: {sorted(CREDENTIAL_KEYS)})",
                             reason="InvalidCredentials")
    username = raw.get("username")
    if username is not None:
        username = _in_source(source, lambda: reach.expand(str(username)))
    password = _secret(raw, "password", reach, source)
    token = _secret(raw, "token", reach, source)
    if password is not None and token is not None:
        raise PermanentError(f"source {source!r}: set credentials.password or token, not both",
                             reason="InvalidCredentials")
    mode = str(raw.get("tokenAuth", "basic")).lower()
    if mode not in ("basic", "bearer"):
        raise PermanentError(f"source {source!r}: credentials.tokenAuth must be basic or "
                             "bearer", reason="InvalidCredentials")
    bearer = None
    if token is not None and mode == "bearer":
        bearer = token
    elif token is not None:
        password, username = token, username or "x-access-token"
    key_file = raw.get("sshKeyFile")  # a path handed to libssh2, which reads the file
    key = _secret({"sshKey": raw["sshKey"]} if "sshKey" in raw else {}, "sshKey", reach,
                  source)
    if key is not None and key_file is not None:
        raise PermanentError(f"source {source!r}: credentials.sshKey and sshKeyFile are both "
                             "set; keep one", reason="InvalidCredentials")
    key_path = _file_path(key_file, "sshKeyFile", reach, source) if key_file else None
    if key_path is not None and not key_path.is_file():
        raise PermanentError(f"source {source!r}: credentials.sshKeyFile {key_file} is not a "
                             "readable file", reason="InvalidCredentials")
    known = raw.get("knownHosts")
    if raw.get("knownHostsFile") is not None:
        if known is not None:
            raise PermanentError(f"source {source!r}: credentials.knownHosts and "
                                 "knownHostsFile are both set; keep one",
                                 reason="InvalidCredentials")
        known = _read_file(raw["knownHostsFile"], "knownHostsFile", reach, source)
    pub = raw.get("sshPublicKeyFile")
    return Credentials(
        username=username, password=password, bearer=bearer,
        ssh_key_file=key_path, ssh_key=key,
        ssh_public_key_file=_file_path(pub, "sshPublicKeyFile", reach, source) if pub else None,
        ssh_passphrase=_secret(raw, "sshPassphrase", reach, source),
        known_hosts=None if known is None else str(known),
    )


class _Refused(Exception):
    """Raised inside a pygit2 callback; pygit2 re-raises it from ``fetch``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Callbacks(pygit2.RemoteCallbacks):
    """Credentials offered once each (a second request means they were refused), strict host
    key and certificate checks, bearer header."""

    def __init__(self, creds: Credentials, url: GitUrl) -> None:
        super().__init__()
        self._creds = creds
        self._url = url
        self.attempts = 0
        self.offered = "the credentials"
        self.user = ""

    def credentials(self, url: str, username_from_url: str | None,
                    allowed_types: pygit2.enums.CredentialType) -> Any:
        kinds = pygit2.enums.CredentialType
        creds = self._creds
        try:
            asking = parse(url).host
        except ValueError:
            asking = ""
        if asking != self._url.host:  # a credential goes only to the host it was set for
            raise _Refused("CredentialsHostMismatch",
                           f"{asking or url!r} asked for the credentials of {self._url.host!r};"
                           " they are not sent to another host")
        user = username_from_url or creds.username or "git"
        if allowed_types & kinds.USERNAME and not allowed_types & (
                kinds.SSH_KEY | kinds.SSH_MEMORY):
            return pygit2.Username(user)
        self.attempts += 1
        if self.attempts > 1:
            raise _Refused("AuthenticationFailed",
                           f"the server refused {self.offered} for user {self.user!r}")
        if allowed_types & (kinds.SSH_KEY | kinds.SSH_MEMORY) and creds.has_ssh_key:
            pub = str(creds.ssh_public_key_file) if creds.ssh_public_key_file else None
            self.user = user
            self.offered = ("the SSH key of credentials.sshKey" if creds.ssh_key is not None
                            else f"the SSH key {creds.ssh_key_file}")
            if creds.ssh_key is not None:
                return pygit2.KeypairFromMemory(user, None, creds.ssh_key,
                                                creds.ssh_passphrase or "")
            return pygit2.Keypair(user, pub, str(creds.ssh_key_file),
                                  creds.ssh_passphrase or "")
        if allowed_types & kinds.USERPASS_PLAINTEXT and creds.password is not None:
            self.user = username_from_url or creds.username or "git"
            self.offered = "the password" if self.user != "x-access-token" else "the token"
            return pygit2.UserPass(self.user, creds.password)
        wanted = "an SSH key" if allowed_types & kinds.SSH_KEY else "a username and password"
        raise _Refused("AuthenticationFailed",
                       f"the server asks for {wanted} and the source's credentials have none")

    def certificate_check(self, certificate: None, valid: bool, host: bytes) -> bool:
        if not valid:
            what = "SSH host key" if self._url.is_ssh else "TLS certificate"
            raise _Refused("HostKeyUnknown" if self._url.is_ssh else "CertificateInvalid",
                           f"the {what} of {host.decode(errors='replace')} is not trusted")
        return True

    def custom_headers(self) -> list[str] | None:
        if self._creds.bearer is not None and self._url.is_http:
            return [f"Authorization: Bearer {self._creds.bearer}"]
        return None


@contextmanager
def _ssh_home(creds: Credentials) -> Iterator[None]:
    """Point libgit2's home at a directory whose .ssh/known_hosts is the source's."""
    with _HOMEDIR_LOCK:
        if creds.known_hosts is None:
            yield  # libgit2's own home: the process's ~/.ssh/known_hosts
            return
        with tempfile.TemporaryDirectory(prefix="conveyor-ssh-") as home:
            (Path(home) / ".ssh").mkdir(mode=0o700)
            (Path(home) / ".ssh" / "known_hosts").write_text(creds.known_hosts.strip() + "\n")
            before = pygit2.settings.homedir or os.path.expanduser("~")
            pygit2.settings.homedir = home
            try:
                yield
            finally:
                pygit2.settings.homedir = before


# --------------------------------------------------------------------------- errors

_UNREACHABLE = ("failed to connect", "connection refused", "timed out", "timeout",
                "could not resolve", "failed to resolve", "name or service not known",
                "network is unreachable", "no route to host", "connection reset",
                "early eof", "unexpected disconnect", "broken pipe", "ssl error",
                "unexpected http status code: 5", "failed to start ssh session",
                "failed to send request", "failed to receive")
_NOT_FOUND = ("404", "not found", "no such repository", "does not appear to be a git repository",
              "could not find repository", "remote repository not found",
              "no such file or directory", "not a git repository", "access denied")
_AUTH = ("401", "403", "authentication", "unable to extract public key",
         "wrong passphrase", "invalid/unrecognized private key", "permission denied")


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"(://[^/@\s:]*):[^/@\s]*@", r"\1@", text)  # user:password@ in URLs


def translate(exc: BaseException, *, source: str, url: GitUrl, secrets: list[str],
              where: str | None = None, action: str = "fetch",
              check: str = "the source's credentials") -> ConveyorError:
    """A pygit2/OS failure as a Conveyor error whose message holds no secret.

    ``where`` (default ``source 'NAME' (URL)``), ``action`` and ``check`` only word the
    message: the git target says ``git target ...``, ``push`` and which credentials to check.
    """
    where = where or f"source {source!r} ({url.display()})"
    if isinstance(exc, ConveyorError):
        return exc
    if isinstance(exc, _Refused):
        hint = {
            "AuthenticationFailed": f"check {check}",
            "HostKeyUnknown": "add the server's key to credentials.knownHosts/knownHostsFile",
            "CertificateInvalid": "the server's certificate must chain to a trusted CA",
        }.get(exc.reason, "")
        return PermanentError(_scrub(f"{where}: {exc.message}; {hint}", secrets),
                              reason=exc.reason)
    detail = _scrub(str(exc) or type(exc).__name__, secrets)
    low = detail.lower()
    if isinstance(exc, pygit2.GitError) and "hostkey" in low:
        return PermanentError(f"{where}: SSH host key refused ({detail})",
                              reason="HostKeyUnknown")
    if any(s in low for s in _UNREACHABLE):
        return TransientError(f"{where}: cannot reach the server ({detail})",
                              reason="Unreachable")
    if any(s in low for s in _AUTH):
        return PermanentError(f"{where}: authentication failed ({detail}); check {check}",
                              reason="AuthenticationFailed")
    if any(s in low for s in _NOT_FOUND):
        return PermanentError(f"{where}: repository not found ({detail})",
                              reason="RepositoryNotFound")
    return TransientError(f"{where}: {action} failed ({detail})",
                          reason=f"{action.capitalize()}Failed")


# --------------------------------------------------------------------------- the mirror


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The branch head after a fetch; ``head`` is None when the branch is gone (or never was).
    ``branch`` is the one asked for, or the remote's default branch when none was asked.

    ``previous`` is what the mirror held before this fetch (None on the first one), so
    ``changed`` tells a no-op poll apart; deciding about rewrites needs ``GitMirror.is_rewrite``
    against the revision the caller last processed.
    """

    source: str
    url: str
    branch: str
    head: str | None
    previous: str | None = None

    @property
    def changed(self) -> bool:
        return self.head != self.previous


def _valid_branch(branch: str) -> str:
    if not branch or not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
        raise PermanentError(f"not a valid branch name: {branch!r}", reason="InvalidSource")
    return branch


def _has_commit(repo: pygit2.Repository, sha: str) -> bool:
    try:
        return isinstance(repo.get(sha), pygit2.Commit)
    except (ValueError, KeyError):
        return False


def is_rewrite_in(repo: pygit2.Repository, old: str | None, new: str | None) -> bool:
    """True when moving from ``old`` to ``new`` is not a fast-forward (history rewritten).

    No old revision, no new one (a deleted branch), or the same one: not a rewrite. When
    ``old`` is not in ``repo`` although ``new``'s full history is, ``old`` cannot be an
    ancestor of ``new``: a rewrite.
    """
    if old is None or new is None or old == new:
        return False
    if not _has_commit(repo, new):
        raise PermanentError(f"commit {new} is not in {repo.path}", reason="CommitNotFound")
    if not _has_commit(repo, old):
        return True
    return not repo.descendant_of(new, old)


def ensure_bare(path: Path) -> None:
    """Create an empty bare repository at ``path`` unless one is there, atomically: it is
    made beside and renamed into place, so a crash never leaves half a mirror and two
    processes racing both end up with the same one."""
    if (path / "HEAD").exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".init-", dir=path.parent))
    pygit2.init_repository(str(tmp), bare=True)
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race


class GitMirror:
    """A local bare mirror of one git source (or the repository itself, for a local path)."""

    def __init__(self, url: str, cache_dir: Path | str, *, source: str = "default",
                 credentials: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None, scope: SecretScope | None = None,
                 connect_timeout: float = 10.0, timeout: float = 60.0,
                 check_now: bool = True) -> None:
        try:
            self.url = parse(url)
        except ValueError as exc:
            raise PermanentError(f"source {source!r}: {exc}", reason="InvalidSource") from None
        if self.url.password is not None:
            raise PermanentError(
                f"source {source!r}: the URL {self.url.display()} embeds a password; move it "
                "to credentials.password or credentials.token", reason="InvalidSource")
        self.source = source
        self._credentials_raw = dict(credentials or {})
        self._scope = scope_for(environ, scope)
        if check_now:  # else a refused reference surfaces at each fetch, as an event
            load_credentials(self._credentials_raw, source=source, scope=self._scope)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._last_local: dict[str, str | None] = {}
        if self.url.scheme == "local":
            self.path = Path(self.url.path).expanduser().resolve()
        else:
            digest = hashlib.sha256(self.url.key().encode()).hexdigest()[:12]
            slug = re.sub(r"[^A-Za-z0-9_.-]", "_", source)[:40]
            self.path = Path(cache_dir) / f"{slug}-{digest}.git"

    @classmethod
    def from_source(cls, source: SourceConfig, cache_dir: Path | str, *,
                    environ: Mapping[str, str] | None = None, scope: SecretScope | None = None,
                    **kwargs: Any) -> GitMirror:
        """A mirror for a conveyor.yaml source (``url`` expanded, ``credentials`` from raw)."""
        reach = scope_for(environ, scope)
        creds = source.raw.get("credentials")
        if creds is not None and not isinstance(creds, Mapping):
            raise PermanentError(f"source {source.name!r}: credentials must be a mapping",
                                 reason="InvalidCredentials")
        return cls(reach.expand(source.url), cache_dir, source=source.name,
                   credentials=creds, scope=reach, **kwargs)

    @property
    def display_url(self) -> str:
        return self.url.display()

    # ----------------------------------------------------------------- async API

    async def fetch(self, branch: str | None = None) -> FetchResult:
        """Bring ``branch`` up to date from the remote; ``head`` is None if it is gone.

        Without a branch, every branch is mirrored and the result is the remote's default
        branch (its ``HEAD``), which also becomes the mirror's ``HEAD``.
        """
        if branch:
            _valid_branch(branch)
        async with self._lock:
            return await asyncio.to_thread(self._fetch, branch)

    async def ensure_commit(self, sha: str, branch: str | None = None) -> None:
        """Make sure ``sha`` is in the mirror: fetch ``branch`` then every branch and tag if
        it is missing. Raises PermanentError("CommitNotFound") when the remote lacks it."""
        async with self._lock:
            await asyncio.to_thread(self._ensure_commit, sha, branch)

    async def descendant_of(self, new: str, old: str) -> bool:
        """True when ``new`` has ``old`` in its history (both must be in the mirror)."""
        return await asyncio.to_thread(self._descendant_of, new, old)

    async def is_rewrite(self, old: str | None, new: str | None) -> bool:
        """True when ``old`` -> ``new`` is not a fast-forward (a force-push or rebase)."""
        if new is not None:
            await self.ensure_commit(new)
        return await asyncio.to_thread(self._is_rewrite, old, new)

    # ----------------------------------------------------------------- worker threads

    def _open(self) -> pygit2.Repository:
        if self.url.scheme == "local":
            try:
                return pygit2.Repository(str(self.path))
            except pygit2.GitError as exc:
                raise PermanentError(f"source {self.source!r}: {self.path} is not a readable "
                                     f"git repository ({exc})",
                                     reason="RepositoryNotFound") from None
        ensure_bare(self.path)
        repo = pygit2.Repository(str(self.path))
        no_redirects(repo)
        return repo

    def _remote_url(self) -> str:
        if self.url.scheme == "file":
            return self.url.path
        return self.url.display()

    def _transfer(self, repo: pygit2.Repository, refspecs: list[str]) -> str | None:
        """One fetch against the remote, every failure translated; returns the branch the
        remote's HEAD points to, when it says."""
        creds = load_credentials(self._credentials_raw, source=self.source, scope=self._scope)
        pygit2.settings.server_connect_timeout = int(self.connect_timeout * 1000)
        pygit2.settings.server_timeout = int(self.timeout * 1000)
        callbacks = _Callbacks(creds, self.url)
        remote = repo.remotes.create_anonymous(self._remote_url())
        try:
            if self.url.is_ssh:
                with _ssh_home(creds):
                    remote.fetch(refspecs, callbacks=callbacks,
                                 prune=pygit2.enums.FetchPrune.PRUNE)
            else:
                remote.fetch(refspecs, callbacks=callbacks, prune=pygit2.enums.FetchPrune.PRUNE)
        except (pygit2.GitError, OSError, _Refused) as exc:
            error = translate(exc, source=self.source, url=self.url, secrets=creds.secrets())
            log.warning("git.fetch_failed", source=self.source, url=self.display_url,
                        reason=error.reason, error=error.message)
            raise error from None
        for head in remote.list_heads(connect=False):  # what the fetch's connection listed
            if head.name == "HEAD" and head.symref_target:
                return str(head.symref_target).removeprefix("refs/heads/")
        return None

    @staticmethod
    def _head(repo: pygit2.Repository, branch: str) -> str | None:
        ref = repo.references.get(f"refs/heads/{branch}")
        return None if ref is None else str(ref.resolve().target)

    def _fetch(self, wanted: str | None) -> FetchResult:
        repo = self._open()
        branch = wanted or ""
        if self.url.scheme == "local":
            if not branch and not repo.head_is_unborn:
                branch = repo.head.shorthand
            head = self._head(repo, branch) if branch else None
            previous = self._last_local.get(branch)
            self._last_local[branch] = head
        elif branch:
            previous = self._head(repo, branch)
            self._transfer(repo, [f"+refs/heads/{branch}:refs/heads/{branch}"])
            head = self._head(repo, branch)
        else:  # every branch; the answer is the remote's default branch
            previous = None if repo.head_is_unborn else str(repo.head.target)
            default = self._transfer(repo, ["+refs/heads/*:refs/heads/*"])
            branch = default or ""
            if default is not None:
                repo.set_head(f"refs/heads/{default}")
            head = self._head(repo, branch) if branch else None
        log.debug("git.fetched", source=self.source, url=self.display_url, branch=branch,
                  head=head, previous=previous)
        return FetchResult(self.source, self.display_url, branch, head, previous)

    def _ensure_commit(self, sha: str, branch: str | None) -> None:
        repo = self._open()
        if _has_commit(repo, sha):
            return
        if self.url.scheme != "local":
            if branch:
                self._transfer(repo, [f"+refs/heads/{_valid_branch(branch)}:"
                                      f"refs/heads/{branch}"])
            if not _has_commit(repo, sha):
                self._transfer(repo, ["+refs/heads/*:refs/conveyor/all/heads/*",
                                      "+refs/tags/*:refs/conveyor/all/tags/*"])
        if not _has_commit(repo, sha):
            raise PermanentError(f"source {self.source!r} ({self.display_url}): commit {sha} "
                                 "is on no branch or tag of the repository",
                                 reason="CommitNotFound")

    def _descendant_of(self, new: str, old: str) -> bool:
        repo = self._open()
        for sha in (new, old):
            if not _has_commit(repo, sha):
                raise PermanentError(f"commit {sha} is not in the mirror of source "
                                     f"{self.source!r}", reason="CommitNotFound")
        return bool(repo.descendant_of(new, old))

    def _is_rewrite(self, old: str | None, new: str | None) -> bool:
        return is_rewrite_in(self._open(), old, new)


# --------------------------------------------------------------------------- one-shot transfers
# For a repository Conveyor writes to (the git target): the caller owns the repository and
# runs these in a worker thread; credentials, host key checks and error translation are the
# mirror's own.

_NON_FAST_FORWARD = ("non-fastforward", "non-fast-forward", "not present locally")


class _PushCallbacks(_Callbacks):
    """``_Callbacks`` that also collect the server's per-reference rejections of a push."""

    def __init__(self, creds: Credentials, url: GitUrl) -> None:
        super().__init__(creds, url)
        self.rejected: dict[str, str] = {}

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message is not None:
            self.rejected[refname] = message


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


@contextmanager
def _connection(creds: Credentials, url: GitUrl, connect_timeout: float,
                timeout: float) -> Iterator[None]:
    """libgit2's timeouts, and for SSH the target's known_hosts (see ``_ssh_home``)."""
    pygit2.settings.server_connect_timeout = int(connect_timeout * 1000)
    pygit2.settings.server_timeout = int(timeout * 1000)
    if url.is_ssh:
        with _ssh_home(creds):
            yield
    else:
        yield


def fetch_refs(repo: pygit2.Repository, url: GitUrl, refspecs: list[str], creds: Credentials,
               *, where: str, check: str, connect_timeout: float = 10.0,
               timeout: float = 60.0) -> None:
    """One fetch of ``refspecs`` (pruned), every failure translated (``where`` names it)."""
    callbacks = _Callbacks(creds, url)
    no_redirects(repo)
    remote = repo.remotes.create_anonymous(remote_url(url))
    try:
        with _connection(creds, url, connect_timeout, timeout):
            remote.fetch(refspecs, callbacks=callbacks, prune=pygit2.enums.FetchPrune.PRUNE)
    except (pygit2.GitError, OSError, _Refused) as exc:
        error = translate(exc, source="", url=url, secrets=creds.secrets(), where=where,
                          check=check)
        log.warning("git.fetch_failed", where=where, reason=error.reason, error=error.message)
        raise error from None


def push_refs(repo: pygit2.Repository, url: GitUrl, refspecs: list[str], creds: Credentials,
              *, where: str, check: str, connect_timeout: float = 10.0,
              timeout: float = 60.0) -> None:
    """One push of ``refspecs``, never forced unless a refspec says ``+``.

    A push that is not a fast-forward of what the remote holds (someone else pushed since the
    last fetch), or that the server refuses for a reference, raises
    ``ConflictError(reason="PushRejected")``: fetch again and decide. Any other failure is
    translated like a fetch's (``action`` "push").
    """
    callbacks = _PushCallbacks(creds, url)
    no_redirects(repo)
    remote = repo.remotes.create_anonymous(remote_url(url))
    secrets = creds.secrets()
    try:
        with _connection(creds, url, connect_timeout, timeout):
            remote.push(refspecs, callbacks=callbacks)
    except (pygit2.GitError, OSError, _Refused) as exc:
        detail = _scrub(str(exc), secrets)
        if isinstance(exc, pygit2.GitError) and any(s in detail.lower()
                                                    for s in _NON_FAST_FORWARD):
            raise ConflictError(f"{where}: push rejected ({detail})",
                                reason="PushRejected") from None
        error = translate(exc, source="", url=url, secrets=secrets, where=where,
                          action="push", check=check)
        log.warning("git.push_failed", where=where, reason=error.reason, error=error.message)
        raise error from None
    if callbacks.rejected:
        detail = _scrub("; ".join(f"{ref}: {msg}" for ref, msg in callbacks.rejected.items()),
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
    import subprocess

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
