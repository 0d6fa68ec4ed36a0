"""Commit signature verification on real SSH- and OpenPGP-signed commits."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from orchestrator.adapters.git_signatures import verify_commit, verify_commit_async
from tests.support.gitservers import commit, init_repo, ssh_keygen

SIGNER = "signer@conveyor.invalid"
needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None,
                               reason="gpg missing (apt-get install -y gnupg)")
needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                      reason="ssh-keygen missing (apt-get install -y "
                                             "openssh-client)")


def ssh_commit(work: Path, key: Path, files: dict[str, str]) -> str:
    env = {"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "gpg.format",
           "GIT_CONFIG_VALUE_0": "ssh", "GIT_CONFIG_KEY_1": "user.signingkey",
           "GIT_CONFIG_VALUE_1": str(key)}
    return commit(work, files, "signed with ssh", args=["-S"], env=env)


def forge(repo_path: Path, sha: str, new_message: str) -> str:
    """A commit carrying ``sha``'s signature over a different payload: wrongly signed."""
    repo = pygit2.Repository(str(repo_path))
    signed = repo.get(sha)
    assert isinstance(signed, pygit2.Commit)
    signature, payload = signed.gpg_signature
    content = payload.decode().replace("signed with", new_message)
    assert content != payload.decode()
    return str(repo.create_commit_with_signature(content, signature.decode()))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    repo = init_repo(tmp_path / "work")
    commit(repo, {"README": "unsigned\n"}, "unsigned")
    return repo


# --------------------------------------------------------------------------- SSH


@pytest.fixture
def ssh_keys(tmp_path: Path) -> dict[str, Path]:
    trusted = ssh_keygen(tmp_path / "trusted", comment=SIGNER)
    stranger = ssh_keygen(tmp_path / "stranger")
    allowed = tmp_path / "allowed_signers"
    pub = trusted.with_suffix(".pub").read_text().split()
    allowed.write_text(f'{SIGNER},ops@conveyor.invalid namespaces="git" {pub[0]} {pub[1]}\n')
    return {"trusted": trusted, "stranger": stranger, "allowed": allowed}


@needs_ssh_keygen
def test_ssh_signed_by_a_trusted_key(work: Path, ssh_keys: dict[str, Path]) -> None:
    sha = ssh_commit(work, ssh_keys["trusted"], {"a": "1"})
    result = verify_commit(work, sha, allowed_signers=ssh_keys["allowed"])
    assert result.ok, result
    assert (result.reason, result.signer, result.format) == ("Verified", SIGNER, "ssh")
    assert result.key is not None and result.key.startswith("SHA256:")


@needs_ssh_keygen
def test_ssh_signed_by_an_unknown_key(work: Path, ssh_keys: dict[str, Path]) -> None:
    sha = ssh_commit(work, ssh_keys["stranger"], {"a": "1"})
    result = verify_commit(work, sha, allowed_signers=ssh_keys["allowed"])
    assert (result.ok, result.reason) == (False, "UnknownSigner")


@needs_ssh_keygen
def test_ssh_signature_over_other_content(work: Path, ssh_keys: dict[str, Path]) -> None:
    sha = ssh_commit(work, ssh_keys["trusted"], {"a": "1"})
    forged = forge(work, sha, "tampered with")
    result = verify_commit(work, forged, allowed_signers=ssh_keys["allowed"])
    assert (result.ok, result.reason) == (False, "BadSignature")


@needs_ssh_keygen
def test_ssh_signed_without_allowed_signers(work: Path, ssh_keys: dict[str, Path]) -> None:
    sha = ssh_commit(work, ssh_keys["trusted"], {"a": "1"})
    result = verify_commit(work, sha)
    assert (result.ok, result.reason, result.format) == (False, "NoTrustedKeys", "ssh")


@needs_ssh_keygen
def test_ssh_key_not_yet_valid_at_commit_time(work: Path, ssh_keys: dict[str, Path]) -> None:
    sha = ssh_commit(work, ssh_keys["trusted"], {"a": "1"})
    pub = ssh_keys["trusted"].with_suffix(".pub").read_text().split()
    ssh_keys["allowed"].write_text(f'{SIGNER} valid-after="29990101" {pub[0]} {pub[1]}\n')
    result = verify_commit(work, sha, allowed_signers=ssh_keys["allowed"])
    assert not result.ok


# --------------------------------------------------------------------------- OpenPGP


@pytest.fixture
def gnupg(tmp_path: Path) -> Iterator[dict[str, Path | str]]:
    """A throwaway GNUPGHOME with a passphrase-less signing key, and its public export."""
    home = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))  # short path: agent socket
    env = {"GNUPGHOME": str(home)}

    def gpg(*args: str) -> str:
        proc = subprocess.run(["gpg", "--batch", "--passphrase", "", *args], env=env,
                              capture_output=True, check=True)
        return proc.stdout.decode()

    try:
        gpg("--quick-gen-key", f"Conveyor Signer <{SIGNER}>", "ed25519", "sign", "1d")
        gpg("--quick-gen-key", "Stranger <stranger@conveyor.invalid>", "ed25519", "sign", "1d")
        fprs = [line.split(":")[9] for line in gpg("--with-colons", "--list-secret-keys")
                .splitlines() if line.startswith("fpr:")]
        signer_fpr = next(f for f in fprs
                          if SIGNER in gpg("--list-keys", f))
        stranger_fpr = next(f for f in fprs if f != signer_fpr)
        keyring = tmp_path / "trusted.asc"
        keyring.write_text(gpg("--armor", "--export", signer_fpr))
        yield {"home": home, "keyring": keyring, "signer": signer_fpr,
               "stranger": stranger_fpr}
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                       capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def gpg_commit(work: Path, gnupg: dict[str, Path | str], key: str) -> str:
    env = {"GNUPGHOME": str(gnupg["home"]), "GIT_CONFIG_COUNT": "1",
           "GIT_CONFIG_KEY_0": "user.signingkey", "GIT_CONFIG_VALUE_0": key}
    return commit(work, {"b": key}, "signed with gpg", args=["-S"], env=env)


@needs_gpg
def test_openpgp_signed_by_a_trusted_key(work: Path, gnupg: dict[str, Path | str]) -> None:
    sha = gpg_commit(work, gnupg, str(gnupg["signer"]))
    result = verify_commit(work, sha, keyring=gnupg["keyring"])
    assert result.ok, result
    assert (result.reason, result.format) == ("Verified", "openpgp")
    assert result.signer == f"Conveyor Signer <{SIGNER}>"
    assert result.key == gnupg["signer"]


@needs_gpg
def test_openpgp_signed_by_a_key_not_in_the_keyring(work: Path,
                                                    gnupg: dict[str, Path | str]) -> None:
    sha = gpg_commit(work, gnupg, str(gnupg["stranger"]))
    result = verify_commit(work, sha, keyring=gnupg["keyring"])
    assert (result.ok, result.reason) == (False, "UnknownSigner")


@needs_gpg
def test_openpgp_signature_over_other_content(work: Path,
                                              gnupg: dict[str, Path | str]) -> None:
    sha = gpg_commit(work, gnupg, str(gnupg["signer"]))
    forged = forge(work, sha, "tampered with")
    result = verify_commit(work, forged, keyring=gnupg["keyring"])
    assert (result.ok, result.reason) == (False, "BadSignature")


@needs_gpg
def test_openpgp_without_keyring_and_with_ssh_trust_only(work: Path,
                                                         gnupg: dict[str, Path | str],
                                                         tmp_path: Path) -> None:
    sha = gpg_commit(work, gnupg, str(gnupg["signer"]))
    signers = tmp_path / "allowed_signers"
    signers.write_text("")
    result = verify_commit(work, sha, allowed_signers=signers)
    assert (result.ok, result.reason, result.format) == (False, "NoTrustedKeys", "openpgp")


# --------------------------------------------------------------------------- common


async def test_unsigned_and_missing_commits(work: Path, tmp_path: Path) -> None:
    head = str(pygit2.Repository(str(work)).head.target)
    result = await verify_commit_async(work, head, allowed_signers=tmp_path / "x",
                                       keyring=tmp_path / "y")
    assert (result.ok, result.reason, result.signer) == (False, "Unsigned", None)
    missing = await verify_commit_async(work, "2" * 40)
    assert (missing.ok, missing.reason) == (False, "CommitNotFound")
