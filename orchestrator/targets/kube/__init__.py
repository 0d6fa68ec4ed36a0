"""The Kubernetes target: server-side apply, inventory and prune, health waits, drift compare."""
