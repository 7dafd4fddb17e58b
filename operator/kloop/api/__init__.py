"""The kloop.dev/v1alpha1 API: pydantic models, the single source of truth for the CRDs."""

GROUP = "kloop.dev"
VERSION = "v1alpha1"
