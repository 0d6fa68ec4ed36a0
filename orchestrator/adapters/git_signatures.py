"""Commit signatures: is this revision signed by someone we trust?

A commit carries its signature in the ``gpgsig`` header; pygit2 splits it off with
``commit.gpg_signature -> (signature, signed_payload)`` (both None when unsigned). The
signature is then checked by the tool that made it, exactly as ``git verify-commit`` does:

- **SSH** (``-----BEGIN SSH SIGNATURE-----``): against an ``allowed_signers`` file (the format
  of ``gpg.ssh.allowedSignersFile``: ``principal[,principal...] [options] keytype key``).
  ``ssh-keygen -Y find-principals`` names the principals whose key made the signature, then
  ``ssh-keygen -Y verify -n git -I <principal>`` checks it with the payload on stdin, at the
  commit's time (``-O verify-time``) like git, so ``valid-after``/``valid-before`` apply.
- **OpenPGP** (``-----BEGIN PGP SIGNATURE-----``): against a keyring file of trusted public
  keys (armored or binary export, one or many keys). The keys are imported into a throwaway
  ``--homedir`` and ``gpg --verify --status-fd`` decides; being in that file *is* the trust
  (``--trust-model always``), nothing from the user's own keyring is consulted.
- X.509 (gpgsm) signatures are reported as unsupported.

The result is a ``SignatureResult(ok, reason, signer, key, format)``; ``reason`` is one of
``Verified``, ``Unsigned``, ``UnknownSigner``, ``BadSignature``, ``ExpiredKey``,
``RevokedKey``, ``NoTrustedKeys`` (signed, but no trust store configured for that format),
``UnsupportedFormat``, ``CommitNotFound``, ``VerifierMissing`` (the tool is not installed) or
``VerifierFailed``. Only ``Verified`` has ``ok=True``. Policy (reject, warn) is the caller's.

Needs ``ssh-keygen`` (Debian ``openssh-client``) and ``gpg`` (Debian ``gnupg``) on PATH.
``verify_commit`` blocks (subprocesses); ``verify_commit_async`` runs it in a worker thread.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pygit2

SSH_ARMOR = b"-----BEGIN SSH SIGNATURE-----"
PGP_ARMOR = b"-----BEGIN PGP SIGNATURE-----"
X509_ARMOR = b"-----BEGIN SIGNED MESSAGE-----"
NAMESPACE = "git"


@dataclass(frozen=True, slots=True)
class SignatureResult:
    """``ok`` only for a good signature by a trusted key; ``signer`` is the SSH principal or
    the OpenPGP user id, ``key`` the key's fingerprint when known."""

    ok: bool
    reason: str
    signer: str | None = None
    key: str | None = None
    format: str | None = None  # "ssh" | "openpgp" | "x509"
    detail: str = ""


def _run(argv: list[str], *, stdin: bytes | None = None,
         timeout: float) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)


def _verify_ssh(signature: bytes, payload: bytes, commit_time: int,
                allowed_signers: Path | None, timeout: float) -> SignatureResult:
    if allowed_signers is None:
        return SignatureResult(False, "NoTrustedKeys", format="ssh",
                               detail="SSH-signed, but no allowed_signers file is configured")
    if shutil.which("ssh-keygen") is None:
        return SignatureResult(False, "VerifierMissing", format="ssh",
                               detail="ssh-keygen is not installed (openssh-client)")
    with tempfile.TemporaryDirectory(prefix="conveyor-sig-") as tmp:
        sigfile = Path(tmp) / "commit.sig"
        sigfile.write_bytes(signature)
        found = _run(["ssh-keygen", "-Y", "find-principals", "-s", str(sigfile),
                      "-f", str(allowed_signers)], timeout=timeout)
        principals = [p for p in found.stdout.decode(errors="replace").splitlines() if p]
        if found.returncode != 0 or not principals:
            return SignatureResult(False, "UnknownSigner", format="ssh",
                                   detail="the signing key is not in allowed_signers")
        when = datetime.fromtimestamp(commit_time, UTC).strftime("%Y%m%d%H%M%SZ")
        last = ""
        for principal in principals:
            checked = _run(["ssh-keygen", "-Y", "verify", "-f", str(allowed_signers),
                            "-I", principal, "-n", NAMESPACE, "-s", str(sigfile),
                            "-O", f"verify-time={when}"], stdin=payload, timeout=timeout)
            out = (checked.stdout + checked.stderr).decode(errors="replace").strip()
            if checked.returncode == 0:
                key = out.rsplit(" ", 1)[-1] if "SHA256:" in out else None
                return SignatureResult(True, "Verified", signer=principal, key=key,
                                       format="ssh", detail=out)
            last = out
    return SignatureResult(False, "BadSignature", signer=principals[0], format="ssh",
                           detail=last)


def _verify_openpgp(signature: bytes, payload: bytes, keyring: Path | None,
                    timeout: float) -> SignatureResult:
    if keyring is None:
        return SignatureResult(False, "NoTrustedKeys", format="openpgp",
                               detail="OpenPGP-signed, but no keyring is configured")
    gpg = shutil.which("gpg")
    if gpg is None:
        return SignatureResult(False, "VerifierMissing", format="openpgp",
                               detail="gpg is not installed (gnupg)")
    with tempfile.TemporaryDirectory(prefix="conveyor-gpg-") as home:
        base = [gpg, "--homedir", home, "--batch", "--no-tty", "--no-autostart",
                "--no-auto-key-retrieve", "--no-auto-check-trustdb"]
        imported = _run([*base, "--quiet", "--import", str(keyring)], timeout=timeout)
        if imported.returncode not in (0, 2):  # 2: some keys skipped, the rest usable
            return SignatureResult(False, "VerifierFailed", format="openpgp",
                                   detail=imported.stderr.decode(errors="replace").strip())
        sigfile, datafile = Path(home) / "commit.sig", Path(home) / "commit.payload"
        sigfile.write_bytes(signature)
        datafile.write_bytes(payload)
        checked = _run([*base, "--trust-model", "always", "--status-fd", "1", "--verify",
                        str(sigfile), str(datafile)], timeout=timeout)
    status: dict[str, list[str]] = {}
    for line in checked.stdout.decode(errors="replace").splitlines():
        if line.startswith("[GNUPG:] "):
            word, *rest = line.removeprefix("[GNUPG:] ").split(" ", 1)
            status.setdefault(word, []).append(rest[0] if rest else "")
    fpr = status["VALIDSIG"][0].split()[0] if "VALIDSIG" in status else None

    def uid(word: str) -> str | None:
        parts = status[word][0].split(" ", 1)
        return parts[1] if len(parts) > 1 else None

    if "BADSIG" in status:
        return SignatureResult(False, "BadSignature", signer=uid("BADSIG"), format="openpgp")
    if "NO_PUBKEY" in status or "ERRSIG" in status:
        return SignatureResult(False, "UnknownSigner", format="openpgp",
                               detail="the signing key is not in the keyring")
    if "REVKEYSIG" in status:
        return SignatureResult(False, "RevokedKey", signer=uid("REVKEYSIG"), key=fpr,
                               format="openpgp")
    if "EXPKEYSIG" in status or "EXPSIG" in status:
        word = "EXPKEYSIG" if "EXPKEYSIG" in status else "EXPSIG"
        return SignatureResult(False, "ExpiredKey", signer=uid(word), key=fpr,
                               format="openpgp")
    if "GOODSIG" in status and fpr is not None and checked.returncode == 0:
        return SignatureResult(True, "Verified", signer=uid("GOODSIG"), key=fpr,
                               format="openpgp")
    return SignatureResult(False, "BadSignature", format="openpgp",
                           detail=checked.stderr.decode(errors="replace").strip())


def verify_commit(repo: pygit2.Repository | Path | str, sha: str, *,
                  allowed_signers: Path | str | None = None,
                  keyring: Path | str | None = None,
                  tool_timeout: float = 30.0) -> SignatureResult:
    """Check the signature of commit ``sha`` in ``repo`` (blocking; see the module doc)."""
    repository = repo if isinstance(repo, pygit2.Repository) else pygit2.Repository(str(repo))
    try:
        commit = repository.get(sha)
    except ValueError:
        commit = None
    if not isinstance(commit, pygit2.Commit):
        return SignatureResult(False, "CommitNotFound", detail=f"{sha} is not a commit here")
    signature, payload = commit.gpg_signature
    if not signature or payload is None:
        return SignatureResult(False, "Unsigned")
    sig = bytes(signature).strip()
    data = bytes(payload)
    try:
        if sig.startswith(SSH_ARMOR):
            signers = Path(allowed_signers) if allowed_signers is not None else None
            return _verify_ssh(sig + b"\n", data, commit.commit_time, signers, tool_timeout)
        if sig.startswith(PGP_ARMOR):
            ring = Path(keyring) if keyring is not None else None
            return _verify_openpgp(sig + b"\n", data, ring, tool_timeout)
    except subprocess.TimeoutExpired:
        return SignatureResult(False, "VerifierFailed", detail=f"timed out after {tool_timeout}s")
    fmt = "x509" if sig.startswith(X509_ARMOR) else None
    return SignatureResult(False, "UnsupportedFormat", format=fmt)


async def verify_commit_async(repo_path: Path | str, sha: str, *,
                              allowed_signers: Path | str | None = None,
                              keyring: Path | str | None = None,
                              tool_timeout: float = 30.0) -> SignatureResult:
    """``verify_commit`` in a worker thread, with its own Repository object."""
    return await asyncio.to_thread(verify_commit, Path(repo_path), sha,
                                   allowed_signers=allowed_signers, keyring=keyring,
                                   tool_timeout=tool_timeout)
