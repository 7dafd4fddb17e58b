"""The pure half of drift: which fields drifted, conflicts, bounds, manifests."""

from __future__ import annotations

from typing import Any

import pytest

from kloop.core import drift
from kloop.core.drift import MISSING, FieldDrift, ManifestError, ObjectDrift
from kloop.core.model import DriftOutcome

pytestmark = pytest.mark.unit


def cm(data: dict[str, str], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "team-a", **meta},
        "data": data,
    }


def live(obj: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What the apiserver returns: volatile metadata and whatever else added."""
    out = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "7", "uid": "u", **extra}}
    out["metadata"]["managedFields"] = [{"manager": "kubectl-edit"}]
    return out


def test_identical_objects_do_not_drift() -> None:
    desired = cm({"mode": "y"})
    assert drift.drifted_fields(desired, live(desired), live(desired)) == []


def test_volatile_metadata_and_status_never_drift_even_if_the_manifest_sets_them() -> None:
    desired = {**cm({"mode": "y"}, resourceVersion="1", uid="x"), "status": {"ready": True}}
    would_be = live(cm({"mode": "y"}), generation=2)
    current = {**live(cm({"mode": "y"}), generation=1), "status": {"ready": False}}
    assert drift.drifted_fields(desired, would_be, current) == []


def test_a_changed_value_is_named_with_both_values() -> None:
    desired = cm({"mode": "y"})
    fields = drift.drifted_fields(desired, live(cm({"mode": "y"})), live(cm({"mode": "x"})))
    assert fields == [FieldDrift("data.mode", "x", "y")]
    assert drift.describe_field("ConfigMap team-a/settings", fields[0]) == (
        'ConfigMap team-a/settings: data.mode is "x", want "y"'
    )


def test_fields_only_other_managers_set_are_ignored() -> None:
    """The dry run keeps fields the manifest does not set; even if they differ, not drift."""
    desired = cm({"mode": "y"})
    would_be = live(cm({"mode": "y", "extra": "theirs"}), labels={"team": "a"})
    current = live(cm({"mode": "y", "extra": "other"}), labels={"team": "b"})
    assert drift.drifted_fields(desired, would_be, current) == []


def test_a_key_the_live_object_lacks_is_reported_once_at_its_path() -> None:
    desired = cm({"mode": "y"}, labels={"app": "web"})
    would_be = live(cm({"mode": "y"}, labels={"app": "web"}))
    current = live(cm({"mode": "y"}))
    assert drift.drifted_fields(desired, would_be, current) == [
        FieldDrift("metadata.labels", MISSING, {"app": "web"})
    ]


def test_keys_with_dots_are_quoted() -> None:
    desired = cm({"app.conf": "b"})
    fields = drift.drifted_fields(desired, live(cm({"app.conf": "b"})), live(cm({"app.conf": "a"})))
    assert [f.path for f in fields] == ['data["app.conf"]']


def deployment(image: str, replicas: int = 2, env: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "web"},
        "spec": {
            "replicas": replicas,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "sidecar", "image": "proxy:1"},
                        {"name": "api", "image": image, "env": [{"name": "E", "value": env}]},
                    ]
                }
            },
        },
    }


def test_named_list_items_are_matched_by_name() -> None:
    desired = deployment("api:2")
    desired["spec"]["template"]["spec"]["containers"] = [
        {"name": "api", "image": "api:2", "env": [{"name": "E", "value": "1"}]}
    ]
    fields = drift.drifted_fields(desired, deployment("api:2"), deployment("api:1", env="2"))
    assert [(f.path, f.live, f.want) for f in fields] == [
        ("spec.template.spec.containers[name=api].image", "api:1", "api:2"),
        ("spec.template.spec.containers[name=api].env[name=E].value", "2", "1"),
    ]


def test_a_changed_scalar_list_is_reported_whole() -> None:
    desired = {**cm({}), "spec": {"ports": [80, 443]}}
    would_be = {**cm({}), "spec": {"ports": [80, 443]}}
    current = {**cm({}), "spec": {"ports": [80]}}
    del desired["data"]
    assert drift.drifted_fields(desired, would_be, current) == [
        FieldDrift("spec.ports", [80], [80, 443])
    ]


def test_conflicts_name_the_field_the_manager_and_both_values() -> None:
    status = {
        "kind": "Status",
        "reason": "Conflict",
        "details": {
            "causes": [
                {
                    "reason": "FieldManagerConflict",
                    "message": 'conflict with "kubectl-edit" using v1',
                    "field": ".data.mode",
                },
                {
                    "reason": "FieldManagerConflict",
                    "message": 'conflict with "deployer" using apps/v1',
                    "field": '.spec.template.spec.containers[name="api"].image',
                },
            ]
        },
    }
    pairs = drift.parse_conflicts(status)
    assert pairs == [
        ("data.mode", "kubectl-edit"),
        ('spec.template.spec.containers[name="api"].image', "deployer"),
    ]
    desired = {**deployment("api:2"), "data": {"mode": "y"}}
    current = {**deployment("api:1"), "data": {"mode": "x"}}
    fields = drift.conflict_fields(desired, current, pairs)
    assert [(f.live, f.want, f.owner) for f in fields] == [
        ("x", "y", "kubectl-edit"),
        ("api:1", "api:2", "deployer"),
    ]
    assert drift.describe_field("ConfigMap a/b", fields[0]) == (
        'ConfigMap a/b: data.mode is "x", want "y" (set by kubectl-edit)'
    )


def test_secret_values_never_appear_in_details() -> None:
    fields = [FieldDrift("data.token", "czNjcjN0", "bmV3", "kubectl-edit")]
    hidden = drift.hide_secrets("Secret", fields)
    assert drift.hide_secrets("ConfigMap", fields) == fields
    outcome = drift.summarize([ObjectDrift("Secret a/creds", fields=hidden)])
    assert outcome.details == [
        "Secret a/creds: data.token differs (value hidden) (set by kubectl-edit)"
    ]


def test_a_secrets_string_data_is_compared_as_the_data_it_becomes() -> None:
    desired = {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"token": "new"}}
    would_be = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"token": "bmV3"}}
    current = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"token": "b2xk"}}
    assert drift.drifted_fields(desired, would_be, current) == [
        FieldDrift("data.token", "b2xk", "bmV3")
    ]
    assert drift.drifted_fields(desired, would_be, would_be) == []


def test_a_409_without_field_conflicts_is_not_read_as_drift() -> None:
    assert drift.parse_conflicts({"reason": "Conflict", "details": {}}) == []
    assert drift.parse_conflicts("not json") == []


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("data.app.conf", "x"),  # a key with a dot: the server does not escape it
        ("metadata.labels.app", "web"),
        ("spec.ports[=443]", 443),
        ("spec.items[1]", "b"),
        ('spec.list[name="n",port=80].v', 1),
        ("spec.nothing", MISSING),
        ('spec.list[name="zz"].v', MISSING),
    ],
)
def test_resolve_server_field_paths(path: str, want: Any) -> None:
    obj = {
        "data": {"app.conf": "x"},
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "ports": [80, 443],
            "items": ["a", "b"],
            "list": [{"name": "n", "port": 81, "v": 0}, {"name": "n", "port": 80, "v": 1}],
        },
    }
    assert drift.resolve(obj, path) == want


def test_summary_counts_objects_and_bounds_the_lines() -> None:
    many = [FieldDrift(f"data.k{i}", "a", "b") for i in range(5)]
    results = [
        ObjectDrift("Deployment web/api", missing=True),
        ObjectDrift("ConfigMap a/ok"),
        ObjectDrift("ConfigMap a/many", fields=many),
        *[ObjectDrift(f"ConfigMap a/x{i}", fields=[many[0]]) for i in range(30)],
    ]
    outcome = drift.summarize(results)
    assert outcome.objects == 32
    assert outcome.error is None
    assert outcome.details[0] == "Deployment web/api: missing"
    assert outcome.details[4] == "ConfigMap a/many: and 2 more drifted fields"
    assert len(outcome.details) == drift.MAX_DETAILS
    assert outcome.details[-1] == "and 16 more lines"


def test_detail_lines_are_clipped() -> None:
    huge = FieldDrift("data.big", "x" * 500, "y" * 500)
    outcome = drift.summarize([ObjectDrift("ConfigMap a/b", fields=[huge])])
    assert len(outcome.details[0]) <= drift.MAX_DETAIL_CHARS
    assert all(len(line) <= drift.MAX_DETAIL_CHARS for line in outcome.details)


def test_nothing_drifted_is_zero_objects_and_no_lines() -> None:
    assert drift.summarize([ObjectDrift("ConfigMap a/b")]) == DriftOutcome(0, [])


def test_manifests_multi_document_lists_and_empty_documents() -> None:
    objects = drift.parse_manifests(
        {
            "b.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
            "a.yaml": (
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a1}\n---\n---\n"
                "apiVersion: v1\nkind: List\nitems:\n"
                "- {apiVersion: v1, kind: Secret, metadata: {name: a2}}\n"
            ),
        }
    )
    assert [o["metadata"]["name"] for o in objects] == ["a1", "a2", "b"]


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ({"bad.yaml": "a: [unclosed"}, "bad.yaml: not valid YAML"),
        ({"list.yaml": "- 1\n- 2\n"}, "list.yaml: document 1 is not an object"),
    ],
)
def test_bad_manifests_are_errors(sources: dict[str, str], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        drift.parse_manifests(sources)


def test_desired_objects_are_checked_and_bounded() -> None:
    ok = cm({"a": "b"})
    assert drift.check_desired([ok]) == [ok]
    with pytest.raises(ManifestError, match="needs apiVersion, kind and metadata.name"):
        drift.check_desired([{"kind": "ConfigMap", "metadata": {"name": "x"}}])
    with pytest.raises(ManifestError, match="at most 256"):
        drift.check_desired([ok] * 257)
    with pytest.raises(ManifestError, match="bytes; at most"):
        drift.check_desired([cm({"a": "x" * (drift.MAX_OBJECT_BYTES + 1)})])
    with pytest.raises(ManifestError, match="desired objects are"):
        drift.check_desired([cm({"a": "x" * (drift.MAX_OBJECT_BYTES - 200)})] * 5)


def test_object_refs() -> None:
    assert drift.object_ref(cm({})) == "ConfigMap team-a/settings"
    assert drift.object_ref({"kind": "Namespace", "metadata": {"name": "n"}}) == "Namespace n"
