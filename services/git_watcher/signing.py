"""Commit signature checks for sources with ``verify:`` (blocking; run in a worker thread).

The trust store paths come from conveyor.yaml (``${VAR}`` expanded with this process's
environment) and name files on this machine, typically a mounted secret: never a file of the
repository being verified. Anything that prevents checking (a missing file, an unset variable,
a verifier that is not installed) is a rejection, never a pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from orchestrator.adapters.git_signatures import verify_commit
from orchestrator.domain.config import VerifyConfig, expand
from orchestrator.errors import ConfigError
from services.git_watcher.decide import Verdict


def check_commit(repo_path: str, sha: str, policy: VerifyConfig | None,
                 environ: Mapping[str, str] | None = None) -> Verdict | None:
    """None without a policy; otherwise the verdict on ``sha``'s signature."""
    if policy is None:
        return None
    raw = policy.allowed_signers if policy.mode == "ssh" else policy.keyring
    try:
        path = Path(expand(raw or "", environ))
    except ConfigError as exc:
        return Verdict(False, "VerifierMisconfigured", str(exc))
    if not path.is_file():
        what = "allowedSigners" if policy.mode == "ssh" else "keyring"
        return Verdict(False, "VerifierMisconfigured", f"verify.{what} {path} is not a file")
    if policy.mode == "ssh":
        result = verify_commit(repo_path, sha, allowed_signers=path)
    else:
        result = verify_commit(repo_path, sha, keyring=path)
    return Verdict(result.ok, result.reason, result.detail, result.signer, result.key,
                   result.format)
