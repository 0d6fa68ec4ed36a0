"""The GitOps workflow: releases, promotions and rollbacks, each one a commit and an event.

Nothing here changes an environment directly. Every action edits the environment's
*declaration* in the watched source branch and pushes a commit (or opens a pull request);
the commit then flows like any other (detected, rendered, applied), and ``conveyor trace``
links the action's event to its deployment through the commit it made (``correlationid``).

- ``declaration``: how a release edits an environment's files (format by format; the pure
  text edits are in ``orchestrator.domain.release``), how a rollback restores the inputs a
  render reads, what an environment runs (images), all on a commit of a local mirror.
- ``workflow``: ``GitOps``, the actions: fetch the branch, check, commit, push (never forced;
  a concurrent push is re-fetched and the edit re-applied on the new head), publish the event;
  ``promote`` (what FROM runs, gates first) and ``auto`` (automatic promotion) build on it.
- ``preview``: pull-request previews (render, diff, one comment, a status per environment).
- ``forge``: pull requests through the forge's API (GitHub, GitLab, Gitea/Forgejo).

Who may act: whoever holds push credentials for the source (the operator configures them:
``CONVEYOR_GIT_*`` for ``--repo``, ``sources.<name>.credentials`` otherwise) through the CLI,
and the api's operator token holders through ``POST /api/v1/environments/{env}/...``.
"""
