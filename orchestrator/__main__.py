"""``python -m orchestrator`` is the ``conveyor`` command."""

from orchestrator.cli import main

main()
