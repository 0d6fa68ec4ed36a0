"""The conveyor command: the CLI and the composition roots that build and run the services."""
