"""Commit signature checks for sources with ``verify:`` (blocking; run in a worker thread).

The trust store paths come from conveyor.yaml (``${VAR}`` expanded within the operator's
``--env-allow``) and name files under the operator's ``--secrets-dir`` (a mounted secret):
never a file of the repository being verified, nor any other host file. Anything that
prevents checking (a missing file, an unset variable, a verifier that is not installed) is a
rejection, never a pass.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.adapters.git_signatures import verify_commit
from orchestrator.domain.config import VerifyConfig
from orchestrator.errors import PermanentError
from orchestrator.secrets import SecretScope
from services.git_watcher.decide import Verdict


def check_commit(repo_path: str, sha: str, policy: VerifyConfig | None,
                 environ: Mapping[str, str] | None = None,
                 scope: SecretScope | None = None) -> Verdict | None:
    """None without a policy; otherwise the verdict on ``sha``'s signature. The trust store
    must lie under the operator's secret directories (``scope``); an explicit ``environ``
    is the caller's own, unrestricted."""
    if policy is None:
        return None
    raw = policy.allowed_signers if policy.mode == "ssh" else policy.keyring
    what = "allowedSigners" if policy.mode == "ssh" else "keyring"
    reach = scope if scope is not None else SecretScope.operator(environ)
    try:
        path = reach.path(raw or "", f"verify.{what}")
    except PermanentError as exc:
        return Verdict(False, "VerifierMisconfigured", exc.message)
    if not path.is_file():
        return Verdict(False, "VerifierMisconfigured", f"verify.{what} {path} is not a file")
    if policy.mode == "ssh":
        result = verify_commit(repo_path, sha, allowed_signers=path)
    else:
        result = verify_commit(repo_path, sha, keyring=path)
    return Verdict(result.ok, result.reason, result.detail, result.signer, result.key,
                   result.format)
