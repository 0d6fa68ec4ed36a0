"""Where a change is applied: a Kubernetes cluster (server-side apply) or a Git branch."""
