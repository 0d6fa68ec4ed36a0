"""Git failures as Conveyor errors, with no secret in their messages.

Refused credentials -> ``PermanentError(reason="AuthenticationFailed")``; unknown or changed SSH
host key -> ``PermanentError("HostKeyUnknown")``; untrusted TLS certificate ->
``PermanentError("CertificateInvalid")``; missing repository ->
``PermanentError("RepositoryNotFound")``; refused, unreachable or timed out ->
``TransientError("Unreachable")``. Messages name the source and the URL without its password,
and every configured secret is scrubbed from them. No retries happen here: a fetch is one
attempt, and the caller's ``nak(delay)`` is the retry layer.
"""

from __future__ import annotations

import re

import pygit2

from orchestrator.domain.giturls import GitUrl
from orchestrator.errors import ConveyorError, PermanentError, TransientError


class Refused(Exception):
    """Raised inside a pygit2 callback; pygit2 re-raises it from ``fetch``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


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


def scrub(text: str, secrets: list[str]) -> str:
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
    if isinstance(exc, Refused):
        hint = {
            "AuthenticationFailed": f"check {check}",
            "HostKeyUnknown": "add the server's key to credentials.knownHosts/knownHostsFile",
            "CertificateInvalid": "the server's certificate must chain to a trusted CA",
        }.get(exc.reason, "")
        return PermanentError(scrub(f"{where}: {exc.message}; {hint}", secrets),
                              reason=exc.reason)
    detail = scrub(str(exc) or type(exc).__name__, secrets)
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
