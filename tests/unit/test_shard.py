"""Label shards (--shard-label): the selector, and the shard label kept from Loop to run to pod."""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from kubernetes import client

from kloop import shards
from kloop.adapters.kube import Kube
from kloop.adapters.launch import new_run
from kloop.adapters.pods import render_inputs, render_pod
from kloop.api.looprun import LoopRunSpec
from kloop.core.launch import RunRequest
from kloop.core.model import PodRequest, Role
from kloop.core.shard import LABEL_SHARD, ShardError, manager_name, parse
from kloop.main import main
from tests.unit.builders import container, loop_spec

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "selector", "manager"),
    [
        ("kloop.dev/shard=a", "kloop.dev/shard=a", "kloop-operator-shard-a"),
        ("kloop.dev/shard==a", "kloop.dev/shard=a", "kloop-operator-shard-a"),
        ("!kloop.dev/shard", "!kloop.dev/shard", "kloop-operator-shard-none"),
        (" kloop.dev/shard in (a, b) ", "kloop.dev/shard in (a,b)", "kloop-operator-shard-a-b"),
        (
            "kloop.dev/shard notin (a,b)",
            "kloop.dev/shard notin (a,b)",
            "kloop-operator-shard-not-a-b",
        ),
        ("kloop.dev/shard!=a", "kloop.dev/shard!=a", "kloop-operator-shard-not-a"),
        ("kloop.dev/shard", "kloop.dev/shard", "kloop-operator-shard-any"),
    ],
)
def test_shard_selectors_are_normalized_and_named(text: str, selector: str, manager: str) -> None:
    shard = parse(text)
    assert shard.selector == selector
    assert manager_name(shard) == manager


def test_an_unsharded_operator_is_plain_kloop_operator() -> None:
    assert manager_name(None) == "kloop-operator"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("team=a", "may name only kloop.dev/shard"),
        ("kloop.dev/shard=a,team=b", "names the label 'team'"),
        ("", "empty"),
        ("kloop.dev/shard=a,", "ends with a comma"),
        ("kloop.dev/shard=a b", "not a label selector"),
        ("kloop.dev/shard in (a", "not a label selector"),
        ("kloop.dev/shard=-a", "not a label value"),
        ("kloop.dev/shard in ()", "not a label value"),
        (f"kloop.dev/shard={'x' * 64}", "not a label value"),
    ],
)
def test_bad_shard_selectors_are_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(ShardError, match=says):
        parse(text)


def test_the_operator_refuses_a_bad_shard_label_at_startup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--shard-label", "team=a"])
    assert exited.value.code == 2
    assert "--shard-label: the shard selector 'team=a' names the label 'team'" in (
        capsys.readouterr().err
    )


def test_the_operator_validates_the_shard_label_from_its_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KLOOP_SHARD_LABEL", "kloop.dev/shard in (a")
    with pytest.raises(SystemExit):
        main([])
    assert "not a label selector" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("selector", "matching", "other"),
    [
        ("kloop.dev/shard=a", {LABEL_SHARD: "a"}, {LABEL_SHARD: "b"}),
        ("!kloop.dev/shard", {}, {LABEL_SHARD: "a"}),
        ("kloop.dev/shard notin (a,b)", {}, {LABEL_SHARD: "b"}),
        ("kloop.dev/shard notin (a,b)", {LABEL_SHARD: "c"}, {LABEL_SHARD: "a"}),
        ("kloop.dev/shard in (a,b)", {LABEL_SHARD: "b"}, {}),
    ],
)
def test_shards_match_as_the_apiserver_does(
    selector: str, matching: dict[str, str], other: dict[str, str]
) -> None:
    shard = parse(selector)
    assert shard.matches(matching)
    assert not shard.matches(other)


def _loop(labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "kloop.dev/v1alpha1",
        "kind": "Loop",
        "metadata": {"name": "l", "namespace": "team", "uid": "u-l", "labels": labels},
    }


def test_a_run_started_for_a_loop_inherits_its_shard_label_only() -> None:
    loop = _loop({LABEL_SHARD: "b", "argocd.argoproj.io/instance": "app"})
    run = new_run(loop, RunRequest(name="l-manual-1", cause="by hand"))
    assert run["metadata"]["labels"] == {"kloop.dev/loop": "l", LABEL_SHARD: "b"}


def test_a_run_of_an_unlabelled_loop_has_no_shard_label() -> None:
    run = new_run(_loop({}), RunRequest(name="l-manual-1", cause="by hand"))
    assert LABEL_SHARD not in run["metadata"]["labels"]


def _render(run_labels: dict[str, str], template_labels: dict[str, str]) -> dict[str, Any]:
    run = {
        "apiVersion": "kloop.dev/v1alpha1",
        "kind": "LoopRun",
        "metadata": {"name": "r1", "namespace": "team", "uid": "u-1", "labels": run_labels},
    }
    maker = {
        "template": {
            "metadata": {"labels": {**template_labels, "app": "agent"}},
            "spec": {"containers": [container("maker:1", "make")]},
        }
    }
    req = PodRequest("r1-s0-local-i1-maker", Role.MAKER, 1, "default", "local")
    spec = LoopRunSpec.model_validate({"loopRef": {"name": "l"}})
    owner = {"apiVersion": "kloop.dev/v1alpha1", "kind": "LoopRun", "name": "r1", "uid": "u-1"}
    pod = render_pod(req, run, "l", loop_spec(maker=maker), spec, "l-memory", owner)
    inputs = render_inputs(req, run, owner)
    assert inputs["metadata"]["labels"].get(LABEL_SHARD) == pod["metadata"]["labels"].get(
        LABEL_SHARD
    )
    return pod


def test_pods_carry_their_runs_shard_label_over_the_templates() -> None:
    pod = _render({LABEL_SHARD: "a"}, {LABEL_SHARD: "b"})
    assert pod["metadata"]["labels"][LABEL_SHARD] == "a"
    assert pod["metadata"]["labels"]["app"] == "agent"


def test_pods_of_an_unlabelled_run_drop_a_shard_label_from_the_template() -> None:
    pod = _render({}, {LABEL_SHARD: "b"})
    assert LABEL_SHARD not in pod["metadata"]["labels"]
    assert parse("!kloop.dev/shard").matches(pod["metadata"]["labels"])


def _watch_selector(settings: kopf.OperatorSettings, group: str, plural: str, kind: str) -> str:
    """The labelSelector kopf sends with its list and watch of this resource."""
    resource = kopf.Resource(group, "v1" if not group else "v1alpha1", plural, kind=kind)
    return ",".join(sorted(set(settings.watching.label_selectors.collect(resource))))


def test_a_shard_filters_the_watches_of_loops_runs_and_kloops_pods_only() -> None:
    settings = kopf.OperatorSettings()
    settings.watching.label_selectors["v1", "pods"] = "kloop.dev/run"  # as handlers.configure
    shard = shards.configure(settings, kopf.Memo(shard=parse("kloop.dev/shard=a")))
    assert shard is not None
    assert _watch_selector(settings, "kloop.dev", "loops", "Loop") == "kloop.dev/shard=a"
    assert _watch_selector(settings, "kloop.dev", "loopruns", "LoopRun") == "kloop.dev/shard=a"
    assert _watch_selector(settings, "", "pods", "Pod") == "kloop.dev/run,kloop.dev/shard=a"
    assert _watch_selector(settings, "", "configmaps", "ConfigMap") == ""


def test_an_unsharded_operator_watches_every_loop_and_run() -> None:
    settings = kopf.OperatorSettings()
    assert shards.configure(settings, kopf.Memo()) is None
    assert _watch_selector(settings, "kloop.dev", "loopruns", "LoopRun") == ""


def test_each_replica_names_its_shard_in_its_user_agent() -> None:
    kube = Kube(client.ApiClient())
    shards.identify(kube, parse("!kloop.dev/shard"))
    assert kube.api_client.user_agent.startswith("kloop-operator-shard-none/")
    shards.identify(kube, None)
    assert kube.api_client.user_agent.split("/")[0] == "kloop-operator"
