"""What libgit2 is told while it talks to a server: credentials, host checks, its global options.

``Callbacks`` offers a source's credentials once each (a second request means they were
refused), and only to the host of the URL they were configured for; checks host keys and
certificates strictly; sends the bearer header of ``tokenAuth: bearer``.

SSH host keys are checked strictly: the server's key must be in the source's known_hosts
(``knownHosts``/``knownHostsFile``; without either, the process's ``~/.ssh/known_hosts``).
pygit2 1.21 gives the ``certificate_check`` callback no key to compare, and pygit2's default
callback accepts *any* SSH host key; libgit2 itself checks ``$HOME/.ssh/known_hosts`` and
reports the result as ``valid``. So an SSH fetch points libgit2's home directory
(``pygit2.settings.homedir``, process-wide) at a private directory holding the source's
known_hosts and refuses the connection unless ``valid``. The home directory being global, SSH
transfers hold a process-wide lock while they run (other transports do not): ``ssh_home``.

Timeouts are libgit2 options too (``git_libgit2_opts``: one value per process, no per-remote
setting): ``set_timeouts`` sets them once, from the composition root
(``orchestrator/resources.py``), not at each fetch.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pygit2

from orchestrator.adapters.git_credentials import Credentials
from orchestrator.adapters.git_errors import Refused
from orchestrator.domain.giturls import GitUrl, parse

# libgit2's home directory is process-wide (see the module docstring): this lock is what makes
# swapping it safe, so it is process-wide too, by libgit2's design.
_HOMEDIR_LOCK = threading.Lock()
CONNECT_TIMEOUT = 10.0
"""Seconds libgit2 waits for a connection (``server_connect_timeout``)."""
TIMEOUT = 60.0
"""Seconds libgit2 waits for a server's answer (``server_timeout``)."""


def set_timeouts(connect_timeout: float = CONNECT_TIMEOUT, timeout: float = TIMEOUT) -> None:
    """libgit2's connect and read timeouts, for every transfer of this process (libgit2 keeps
    one value per process; two Conveyors in one process set the same defaults)."""
    pygit2.settings.server_connect_timeout = int(connect_timeout * 1000)
    pygit2.settings.server_timeout = int(timeout * 1000)


class Callbacks(pygit2.RemoteCallbacks):
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
            raise Refused("CredentialsHostMismatch",
                           f"{asking or url!r} asked for the credentials of {self._url.host!r};"
                           " they are not sent to another host")
        user = username_from_url or creds.username or "git"
        if allowed_types & kinds.USERNAME and not allowed_types & (
                kinds.SSH_KEY | kinds.SSH_MEMORY):
            return pygit2.Username(user)
        self.attempts += 1
        if self.attempts > 1:
            raise Refused("AuthenticationFailed",
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
        raise Refused("AuthenticationFailed",
                       f"the server asks for {wanted} and the source's credentials have none")

    def certificate_check(self, certificate: None, valid: bool, host: bytes) -> bool:
        if not valid:
            what = "SSH host key" if self._url.is_ssh else "TLS certificate"
            raise Refused("HostKeyUnknown" if self._url.is_ssh else "CertificateInvalid",
                           f"the {what} of {host.decode(errors='replace')} is not trusted")
        return True

    def custom_headers(self) -> list[str] | None:
        if self._creds.bearer is not None and self._url.is_http:
            return [f"Authorization: Bearer {self._creds.bearer}"]
        return None


class PushCallbacks(Callbacks):
    """``Callbacks`` that also collect the server's per-reference rejections of a push."""

    def __init__(self, creds: Credentials, url: GitUrl) -> None:
        super().__init__(creds, url)
        self.rejected: dict[str, str] = {}

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message is not None:
            self.rejected[refname] = message


@contextmanager
def ssh_home(creds: Credentials) -> Iterator[None]:
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



@contextmanager
def connection(creds: Credentials, url: GitUrl) -> Iterator[None]:
    """What one transfer to ``url`` runs inside: for SSH the source's known_hosts
    (``ssh_home``), for other transports nothing."""
    if url.is_ssh:
        with ssh_home(creds):
            yield
    else:
        yield
