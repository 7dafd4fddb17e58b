"""Release triggers, pure parts: tag patterns and order, poll plans, webhook auth and parsing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from kloop.api.loop import ConcurrencyPolicy, WebhookProvider
from kloop.core import tags, webhooks
from kloop.core.launch import tag_run_name
from kloop.core.triggers import (
    TriggerChange,
    baselined,
    interval_seconds,
    next_poll_delay,
    poll_failed,
    poll_source,
    run_request,
    updated,
)
from kloop.core.webhooks import Auth, Ignored, Malformed, TagPush

pytestmark = pytest.mark.unit

GITHUB, GITLAB, GENERIC = WebhookProvider.GITHUB, WebhookProvider.GITLAB, WebhookProvider.GENERIC


@pytest.mark.parametrize(
    ("pattern", "tag", "expected"),
    [
        (None, "anything", True),
        ("v*", "v1.2.0", True),
        ("v*", "release-1", False),
        ("release-*", "release-2024.1", True),
        ("V*", "v1.0.0", False),  # globs are case-sensitive
        (">=1.2.0,<2.0.0", "v1.2.0", True),
        (">=1.2.0,<2.0.0", "1.9.9", True),
        (">=1.2.0,<2.0.0", "v2.0.0", False),
        (">=1.2.0 <2.0.0", "v1.1.9", False),
        (">=1.2.0,<2.0.0", "v1.3.0-rc.1", False),  # pre-releases only when the range names one
        (">=1.3.0-rc.0", "v1.3.0-rc.1", True),
        ("^1.2.0", "v1.4.0", True),
        ("^1.2.0", "v2.0.0", False),
        ("~1.4", "v1.4.7", True),
        ("~1.4", "v1.5.0", False),
        ("==1.2.0", "v1.2.0", True),
        ("=1.2.0", "1.2.1", False),
        ("^v1.0.0", "v1.1.0", True),
        ("^1.0.0 || ^3.0.0", "v3.2.0", True),
        (">=1.0.0", "latest", False),  # not a version: a range never matches it
        (">=1.0.0", "v1.2", False),  # not semver (two parts)
    ],
)
def test_tag_patterns_are_globs_or_semver_ranges(
    pattern: str | None, tag: str, expected: bool
) -> None:
    assert tags.matches(pattern, tag) is expected


def test_a_broken_range_is_reported_not_matched() -> None:
    assert tags.check_pattern(">=banana") is not None
    assert tags.check_pattern("v*") is None
    assert tags.check_pattern(None) is None
    with pytest.raises(tags.PatternError):
        tags.matches(">=banana", "v1.0.0")


def test_tags_order_by_semver_then_naturally() -> None:
    mixed = ["v1.10.0", "v1.2.0", "v1.2.0-rc.1", "1.9.0", "build-10", "build-9", "latest", "v2.0.0"]
    assert tags.ordered(mixed) == [
        "v1.2.0-rc.1",
        "v1.2.0",
        "1.9.0",
        "v1.10.0",
        "v2.0.0",
        "build-9",
        "build-10",
        "latest",
    ]


def test_new_tags_are_those_after_the_last_seen() -> None:
    assert tags.newer_than(["v1.0.0", "v1.1.0", "v1.10.0", "v1.2.0"], "v1.1.0") == [
        "v1.2.0",
        "v1.10.0",
    ]
    assert tags.newer_than(["v1.0.0"], None) == ["v1.0.0"]
    # a tag deleted from the remote still bounds what is new
    assert tags.newer_than(["v1.0.0", "v3.0.0"], "v2.0.0") == ["v3.0.0"]


def test_ls_remote_output_maps_annotated_tags_to_their_commit() -> None:
    output = (
        "aaa\trefs/tags/v1.0.0\n"
        "bbb\trefs/tags/v1.1.0\n"
        "ccc\trefs/tags/v1.1.0^{}\n"
        "ddd\trefs/heads/main\n"
    )
    assert tags.parse_ls_remote(output) == {"v1.0.0": "aaa", "v1.1.0": "ccc"}


REMOTE = {"v1.0.0": "a", "v1.1.0": "b", "v1.2.0": "c", "v2.0.0": "d", "nightly": "e"}


def plan(**kw: Any) -> tags.PollPlan:
    args: dict[str, Any] = {
        "first_poll": False,
        "last_tag": "v1.0.0",
        "already_run": [],
        "policy": ConcurrencyPolicy.ALLOW,
        "busy": False,
    } | kw
    remote = args.pop("remote", REMOTE)
    pattern = args.pop("pattern", "v*")
    return tags.plan_poll(remote, pattern, **args)


def test_the_first_poll_records_a_baseline_and_starts_nothing() -> None:
    p = plan(first_poll=True, last_tag=None)
    assert (p.start, p.last_tag) == ((), "v2.0.0")
    p = plan(first_poll=True, last_tag=None, pattern="release-*")
    assert (p.start, p.last_tag) == ((), None)


def test_a_failed_first_poll_leaves_the_baseline_to_the_first_poll_that_works() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    source = poll_source("http://git.example/app.git", "v*")
    first = updated(None, ["r"], "r", poll_failed({}, "Secret git not found", at, source))
    assert first == [{"name": "r", "message": "Secret git not found"}]
    (entry,) = first
    p = plan(first_poll=not baselined(entry, source), last_tag=entry.get("lastTag"))
    assert (p.start, p.last_tag) == ((), "v2.0.0"), "a baseline, not a run per existing tag"
    polled = {"lastPolled": "2026-01-01T00:00:00Z", "source": source}
    later = poll_failed(polled, "unreachable", at, source)
    assert later.last_polled == at, "after the baseline, failed polls keep the rhythm"


def test_a_trigger_pointed_at_another_repository_or_pattern_takes_a_new_baseline() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    old = poll_source("http://git.example/app.git", "v*")
    new = poll_source("http://git.example/app.git", "release-*")
    assert old != new != poll_source("http://git.example/other.git", "v*")
    entry = {"lastPolled": "2026-01-01T00:00:00Z", "lastTag": "v2.0.0", "source": old}
    assert baselined(entry, old)
    assert not baselined(entry, new), "release-* tags all sort after v2.0.0: re-baseline"
    assert poll_failed(entry, "unreachable", at, new).last_polled is None
    (stored,) = updated([entry], ["r"], "r", TriggerChange(source=new, last_polled=at))
    assert baselined(stored, new)


def test_after_an_empty_baseline_every_matching_tag_is_new() -> None:
    assert plan(last_tag=None, remote={"v1.0.0": "a", "x": "b"}).start == ("v1.0.0",)


def test_allow_starts_every_new_matching_tag_in_order() -> None:
    p = plan(pattern="^1.0.0")
    assert (p.start, p.last_tag) == (("v1.1.0", "v1.2.0"), "v1.2.0")


def test_forbid_starts_the_oldest_and_keeps_the_rest() -> None:
    p = plan(policy=ConcurrencyPolicy.FORBID)
    assert (p.start, p.waiting, p.last_tag) == (("v1.1.0",), ("v1.2.0", "v2.0.0"), "v1.1.0")
    p = plan(policy=ConcurrencyPolicy.FORBID, busy=True)
    assert (p.start, p.waiting, p.last_tag) == ((), ("v1.1.0", "v1.2.0", "v2.0.0"), "v1.0.0")


def test_replace_starts_only_the_newest_new_tag() -> None:
    p = plan(policy=ConcurrencyPolicy.REPLACE)
    assert (p.start, p.superseded, p.last_tag) == (("v2.0.0",), ("v1.1.0", "v1.2.0"), "v2.0.0")


def test_a_tag_already_run_never_starts_again() -> None:
    p = plan(already_run=["v1.1.0", "v2.0.0"])
    assert p.start == ("v1.2.0",)
    p = plan(already_run=["v1.1.0", "v1.2.0", "v2.0.0"])
    assert (p.start, p.last_tag) == ((), "v2.0.0")


def test_recent_tags_are_bounded_newest_last() -> None:
    recent = tags.remember([f"v0.0.{i}" for i in range(50)], "v1.0.0")
    assert len(recent) == 50 and recent[-1] == "v1.0.0" and recent[0] == "v0.0.1"
    assert tags.remember(["a", "b"], "a") == ["b", "a"]


def test_receiver_paths_derive_from_the_token_and_the_trigger() -> None:
    path = webhooks.receiver_path("s3cret", "ns", "app", "release")
    assert path.startswith("/hook/") and len(path) == len("/hook/") + 64
    assert "s3cret" not in path
    assert path == webhooks.receiver_path("s3cret", "ns", "app", "release")
    others = {
        webhooks.receiver_path("other", "ns", "app", "release"),
        webhooks.receiver_path("s3cret", "ns2", "app", "release"),
        webhooks.receiver_path("s3cret", "ns", "app2", "release"),
        webhooks.receiver_path("s3cret", "ns", "app", "release2"),
        webhooks.receiver_path("s3cret", "ns", "ap", "prelease"),  # no concatenation clash
    }
    assert path not in others and len(others) == 5


BODY = b'{"ref": "refs/tags/v1.2.0"}'


@pytest.mark.parametrize(
    ("provider", "headers", "expected"),
    [
        (GITHUB, {}, Auth.MISSING),
        (GITHUB, {"x-hub-signature-256": webhooks.sign("tok", BODY)}, Auth.OK),
        (GITHUB, {"x-hub-signature-256": webhooks.sign("tok", BODY)[:-1]}, Auth.WRONG),
        (GITHUB, {"x-hub-signature-256": webhooks.sign("other", BODY)}, Auth.WRONG),
        (GITHUB, {"x-hub-signature-256": webhooks.sign("tok", BODY + b" ")}, Auth.WRONG),
        (GITHUB, {"x-hub-signature": "sha1=abc"}, Auth.MISSING),  # SHA-1 is not accepted
        (GITHUB, {"x-signature": webhooks.sign("tok", BODY)}, Auth.MISSING),
        (GENERIC, {"x-signature": webhooks.sign("tok", BODY)}, Auth.OK),
        (GENERIC, {"x-signature": "md5=" + webhooks.sign("tok", BODY)[7:]}, Auth.WRONG),
        (GENERIC, {"x-hub-signature-256": webhooks.sign("tok", BODY)}, Auth.MISSING),
        (GITLAB, {"x-gitlab-token": "tok"}, Auth.OK),
        (GITLAB, {"x-gitlab-token": "tok2"}, Auth.WRONG),
        (GITLAB, {"x-gitlab-token": ""}, Auth.MISSING),
        (GITLAB, {"x-hub-signature-256": webhooks.sign("tok", BODY)}, Auth.MISSING),
    ],
)
def test_deliveries_must_prove_the_token(
    provider: WebhookProvider, headers: dict[str, str], expected: Auth
) -> None:
    assert webhooks.verify(provider, "tok", headers, BODY) is expected


def github_push(ref: str = "refs/tags/v1.2.0", **extra: Any) -> bytes:
    doc = {
        "ref": ref,
        "after": "1" * 40,
        "deleted": False,
        "head_commit": {"id": "2" * 40},
        "repository": {"full_name": "acme/app"},
        "pusher": {"name": "alice"},
        "sender": {"login": "alice-gh"},
    } | extra
    return json.dumps(doc).encode()


def gitlab_tag_push(**extra: Any) -> bytes:
    doc = {
        "object_kind": "tag_push",
        "ref": "refs/tags/v1.2.0",
        "after": "3" * 40,
        "checkout_sha": "4" * 40,
        "user_username": "bob",
        "project": {"path_with_namespace": "acme/app"},
    } | extra
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("provider", "headers", "body", "expected"),
    [
        (
            GITHUB,
            {"x-github-event": "push"},
            github_push(),
            TagPush("acme/app", "v1.2.0", "2" * 40, "alice"),
        ),
        (
            GITHUB,
            {"x-github-event": "push"},
            github_push(head_commit=None, pusher=None),
            TagPush("acme/app", "v1.2.0", "1" * 40, "alice-gh"),
        ),
        (GITHUB, {"x-github-event": "push"}, github_push("refs/heads/main"), Ignored),
        (GITHUB, {"x-github-event": "push"}, github_push(deleted=True), Ignored),
        (GITHUB, {"x-github-event": "ping"}, b'{"zen": "hi"}', Ignored),
        (GITHUB, {"x-github-event": "issues"}, b"{}", Ignored),
        (
            GITLAB,
            {"x-gitlab-event": "Tag Push Hook"},
            gitlab_tag_push(),
            TagPush("acme/app", "v1.2.0", "4" * 40, "bob"),
        ),
        (GITLAB, {"x-gitlab-event": "Tag Push Hook"}, gitlab_tag_push(checkout_sha=None), Ignored),
        (GITLAB, {"x-gitlab-event": "Push Hook"}, b'{"ref": "refs/heads/main"}', Ignored),
        (
            GENERIC,
            {},
            b'{"repository": "acme/app", "tag": "v1.2.0", "commit": "abc", "pushedBy": "ci"}',
            TagPush("acme/app", "v1.2.0", "abc", "ci"),
        ),
        (
            GENERIC,
            {},
            b'{"repository": "acme/app", "ref": "refs/tags/v2"}',
            TagPush("acme/app", "v2", "", ""),
        ),
        (GENERIC, {}, b'{"repository": "acme/app", "ref": "refs/heads/x"}', Ignored),
    ],
)
def test_push_and_tag_events_are_read_into_one_shape(
    provider: WebhookProvider, headers: dict[str, str], body: bytes, expected: object
) -> None:
    got = webhooks.parse(provider, headers, body)
    if expected is Ignored:
        assert isinstance(got, Ignored), got
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("provider", "headers", "body"),
    [
        (GITHUB, {"x-github-event": "push"}, b"not json"),
        (GITHUB, {"x-github-event": "push"}, b"[1, 2]"),
        (GITHUB, {"x-github-event": "push"}, b'{"ref": 5}'),
        (GITHUB, {"x-github-event": "push"}, github_push(repository={})),
        (GITHUB, {"x-github-event": "push"}, github_push("refs/tags/bad tag")),
        (GITHUB, {"x-github-event": "push"}, b"\xff\xfe"),
        (GITLAB, {"x-gitlab-event": "Tag Push Hook"}, gitlab_tag_push(ref="refs/heads/main")),
        (GENERIC, {}, b'{"tag": "v1"}'),
        (GENERIC, {}, b'{"repository": "a", "tag": ""}'),
        (GENERIC, {}, b'{"repository": "a", "tag": "v1", "commit": 7}'),
    ],
)
def test_unreadable_deliveries_are_malformed(
    provider: WebhookProvider, headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(Malformed):
        webhooks.parse(provider, headers, body)


def test_delivery_ids_come_from_the_provider_header_or_the_body() -> None:
    assert webhooks.delivery_id(GITHUB, {"x-github-delivery": "d-1"}, b"x") == "d-1"
    assert webhooks.delivery_id(GITLAB, {"x-gitlab-event-uuid": "u-1"}, b"x") == "u-1"
    assert webhooks.delivery_id(GENERIC, {"x-delivery-id": "g-1"}, b"x") == "g-1"
    a = webhooks.delivery_id(GITHUB, {"x-delivery-id": "g-1"}, b"x")
    assert a.startswith("body-sha256:") and a != webhooks.delivery_id(GITHUB, {}, b"y")


def test_a_delivery_id_is_accepted_once_per_trigger() -> None:
    seen = webhooks.SeenDeliveries(limit=2)
    assert seen.check_and_add("t", "1") and not seen.check_and_add("t", "1")
    assert seen.check_and_add("u", "1"), "another trigger's ids are its own"
    assert seen.check_and_add("t", "2")  # the oldest ("t", "1") is forgotten past the limit
    assert seen.check_and_add("t", "1")
    seen.forget("t", "1")
    assert seen.check_and_add("t", "1")


def test_a_tag_push_asks_for_a_run_named_after_the_tag_with_its_context() -> None:
    request = run_request("app", "release", TagPush("acme/app", "v1.2.0", "abc", "alice"), "git")
    assert request.name == tag_run_name("app", "v1.2.0") == "app-v1-2-0-34bd659f"
    assert request.context == {
        "trigger": "release",
        "repository": "acme/app",
        "tag": "v1.2.0",
        "commit": "abc",
        "pushedBy": "alice",
    }
    assert run_request("app", "other", TagPush("x", "v1.2.0", "", ""), "webhook").name == (
        request.name
    ), "one run per tag and Loop, whichever trigger saw it"


def test_status_entries_follow_the_spec_and_keep_other_fields() -> None:
    current = [{"name": "gone", "lastTag": "x"}, {"name": "a", "lastTag": "v1", "message": "m"}]
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    new = updated(current, ["a", "b"], "a", TriggerChange(last_polled=at, clear_message=True))
    assert new == [
        {"name": "a", "lastTag": "v1", "lastPolled": "2026-01-02T03:04:05Z"},
        {"name": "b"},
    ]


def test_polling_intervals_and_the_rhythm_after_a_restart() -> None:
    assert [interval_seconds(t) for t in ("30s", "5m", "1h", "1s")] == [30, 300, 3600, 10]
    now = datetime(2026, 1, 1, 0, 10, 0, tzinfo=UTC)
    assert next_poll_delay(300, None, now) == 0
    assert next_poll_delay(300, "2026-01-01T00:08:00Z", now) == 180
    assert next_poll_delay(300, "2026-01-01T00:00:00Z", now) == 0
    assert next_poll_delay(300, "2026-01-01T00:20:00Z", now) == 300  # clock skew: one interval


def test_an_all_digit_tag_never_takes_the_name_of_a_scheduled_run() -> None:
    from kloop.core.launch import scheduled_run_name

    minute = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    digits = str(int(minute.timestamp()) // 60)
    assert tag_run_name("app", digits) != scheduled_run_name("app", minute)
    assert tag_run_name("app", digits).startswith(f"app-tag-{digits}-")
    assert tag_run_name("app", "release-7") == "app-release-7", "clean tags keep their name"
