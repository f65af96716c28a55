"""Kubernetes glue: manifest generation (`pailfs k8s manifests|deploy`)."""
