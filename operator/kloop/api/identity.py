"""OperatorIdentity: who the kloop operator is, as a parameter of the kloop-agent-pods policy.

A cluster-scoped kind rather than a ConfigMap: the apiserver (seen on 1.34; reported on 1.36)
stops resolving core-type ``paramKind``s for good once a policy is briefly unbound
(kubernetes#130887, fix proposed in kubernetes#141015), then refuses every agent pod, or checks a
stale value, until it restarts. Custom-resource parameters are not affected. Cluster scope also
means only cluster RBAC, not an editor of some namespace, decides who may create agent pods.
"""

from __future__ import annotations

from pydantic import Field

from kloop.api.base import KubeModel


class OperatorIdentitySpec(KubeModel):
    """The user the apiserver authenticates the operator as."""

    username: str = Field(min_length=1, max_length=1024)
    """e.g. system:serviceaccount:kloop-system:kloop (kubectl auth whoami, as the operator)."""
