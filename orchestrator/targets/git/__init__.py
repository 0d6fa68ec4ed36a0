"""The Git target: rendered manifests committed to a branch of this or another repository."""
