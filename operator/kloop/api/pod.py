"""Pod templates as Loops carry them: the parts kloop reads are typed, the rest passes through.

Only ``containers[].name/image/command/args`` are declared (the operator and CEL rules read them);
every other pod field is kept as written and validated by the apiserver when the pod is created.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints

from kloop.api.base import KubeModel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

Arg = Annotated[str, StringConstraints(max_length=4096)]


class Container(KubeModel):
    """A container of an agent pod; any other Kubernetes container field is accepted as written."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )

    name: str = Field(max_length=63, pattern=DNS_LABEL)
    """Container name (a DNS label)."""
    image: str = Field(min_length=1, max_length=512)
    """Container image. Images built without a registry need imagePullPolicy IfNotPresent."""
    command: list[Arg] | None = Field(default=None, max_length=64)
    """Entrypoint override."""
    args: list[Arg] | None = Field(default=None, max_length=64)
    """Arguments to the entrypoint."""


class PodSpecTemplate(KubeModel):
    """A Kubernetes PodSpec. The first container's termination message is the agent's result."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )

    containers: list[Container] = Field(min_length=1, max_length=8)
    """Containers of the pod; the first one is the agent."""


class TemplateMetadata(KubeModel):
    """Labels and annotations copied onto each pod."""

    labels: dict[str, Annotated[str, StringConstraints(max_length=63)]] | None = None
    """Labels added to the pod (kloop's own labels win on conflict)."""
    annotations: dict[str, Annotated[str, StringConstraints(max_length=4096)]] | None = None
    """Annotations added to the pod."""


class PodTemplate(KubeModel):
    """A PodTemplateSpec, as in a Job."""

    metadata: TemplateMetadata | None = None
    """Labels and annotations for the pod."""
    spec: PodSpecTemplate
    """The pod spec."""
