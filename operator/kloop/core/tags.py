"""Release tags: which match a trigger's pattern, in which order, and which are new.

Pure, shared by the webhook receiver and the poller (docs/automations.md, "Release triggers").

- **Pattern**: a glob (``v*``, ``release-*``; ``fnmatch`` rules, case-sensitive) or, when it
  starts with an operator (``>``, ``<``, ``^``, ``~``, ``=``), a semver range with npm's rules
  (``>=1.2.0 <2.0.0``, ``^1.2.0``, ``~1.4``, ``^1.0.0 || ^2.0.0``; commas also separate
  comparators, as in Flux's ImagePolicy). A tag is a version when it parses as semver after
  dropping one leading ``v``. As in npm and Flux, a range matches pre-releases (``1.3.0-rc.1``)
  only when one of its comparators names a pre-release of the same version. No pattern: every tag.
- **Order**: tags that are versions come first, by semver precedence (a tie, ``v1.0.0`` and
  ``1.0.0``, by name); the others follow in natural order (digit runs compared as numbers,
  ``build-9`` before ``build-10``).
- **New**: the tags that sort after the last one seen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from semantic_version import NpmSpec, Version

from kloop.api.loop import ConcurrencyPolicy

RANGE_OPERATORS = (">", "<", "^", "~", "=")
MAX_RECENT_TAGS = 50
_DIGITS = re.compile(r"(\d+)")


class PatternError(ValueError):
    """A tagPattern that is neither a glob nor a valid semver range."""


def version_of(tag: str) -> Version | None:
    """The semver version a tag names (``v1.2.3`` and ``1.2.3``), None when it names none."""
    text = tag[1:] if tag[:1] in ("v", "V") else tag
    try:
        return Version(text)
    except ValueError:
        return None


@lru_cache(maxsize=256)
def _spec(pattern: str) -> Any:
    text = pattern.replace(",", " ").strip()
    text = re.sub(r"==\s*", "=", text)  # Python's == is npm's =
    text = re.sub(r"(^|[\s|<>=^~])[vV](?=\d)", r"\1", text)  # ^v1.2.0 -> ^1.2.0
    try:
        return NpmSpec(" ".join(text.split()))
    except ValueError as err:
        raise PatternError(f"tagPattern {pattern!r} is not a semver range: {err}") from None


def is_range(pattern: str) -> bool:
    """Whether a pattern is a semver range (it starts with an operator) rather than a glob."""
    return pattern.lstrip().startswith(RANGE_OPERATORS)


def check_pattern(pattern: str | None) -> str | None:
    """Why a pattern cannot be used (for the trigger's status message); None when it can."""
    if pattern is None or not is_range(pattern):
        return None
    try:
        _spec(pattern)
    except PatternError as err:
        return str(err)
    return None


def matches(pattern: str | None, tag: str) -> bool:
    """Whether ``tag`` is one the trigger starts runs for; PatternError for a broken range."""
    if pattern is None:
        return True
    if not is_range(pattern):
        return fnmatchcase(tag, pattern)
    version = version_of(tag)
    return version is not None and version in _spec(pattern)


def _natural(tag: str) -> tuple[tuple[int, int, str], ...]:
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in _DIGITS.split(tag)
        if part
    )


def order_key(tag: str) -> tuple[Any, ...]:
    """Sort key of the documented tag order: versions by precedence, then the rest naturally."""
    version = version_of(tag)
    if version is not None:
        return (0, version, tag)
    return (1, _natural(tag), tag)


def ordered(tags: Iterable[str]) -> list[str]:
    """Tags oldest first in the documented order."""
    return sorted(set(tags), key=order_key)


def newer_than(tags: Iterable[str], last: str | None) -> list[str]:
    """The tags after ``last`` in tag order (all of them when ``last`` is None), oldest first."""
    if last is None:
        return ordered(tags)
    bound = order_key(last)
    return [t for t in ordered(tags) if order_key(t) > bound]


def parse_ls_remote(output: str) -> dict[str, str]:
    r"""``git ls-remote --tags`` output -> {tag: commit}; an annotated tag maps to its commit.

    Lines are ``<sha>\trefs/tags/<tag>``; the peeled ``<tag>^{}`` line of an annotated tag
    names the commit the tag points at and wins over the tag object's own sha.
    """
    found: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in output.splitlines():
        sha, _, ref = line.strip().partition("\t")
        if not ref.startswith("refs/tags/") or not sha:
            continue
        name = ref.removeprefix("refs/tags/")
        if name.endswith("^{}"):
            peeled[name[:-3]] = sha
        elif name:
            found[name] = sha
    return {tag: peeled.get(tag, sha) for tag, sha in found.items()}


@dataclass(frozen=True)
class PollPlan:
    """What one poll of a repository does."""

    start: tuple[str, ...]
    """Tags to start runs for, oldest first."""
    last_tag: str | None
    """The new status.triggers[].lastTag: the newest tag handled (started, superseded, baseline)."""
    superseded: tuple[str, ...] = ()
    """New tags passed over because a newer one replaces them (Replace)."""
    waiting: tuple[str, ...] = ()
    """New tags kept for a later poll (Forbid while a run is active, or one at a time)."""
    why: str = ""


def plan_poll(
    tags: Mapping[str, str],
    pattern: str | None,
    *,
    first_poll: bool,
    last_tag: str | None,
    already_run: Sequence[str],
    policy: ConcurrencyPolicy,
    busy: bool,
) -> PollPlan:
    """Decide one poll from the remote's tags (PatternError for a broken range).

    - First poll of a trigger: the newest matching tag becomes the baseline, nothing starts
      (adding a trigger to a repository with a hundred releases must not start a hundred runs).
    - Allow: one run per new tag, oldest first.
    - Forbid: while a run of the Loop is active (``busy``) nothing starts and the new tags wait;
      otherwise only the oldest new tag starts, the rest wait for a poll after it finished.
    - Replace: only the newest new tag starts (it would replace the older ones at once anyway);
      the older ones are recorded as superseded.
    Tags in ``already_run`` (status.triggers[].recentTags) never start again.
    """
    matching = [t for t in tags if matches(pattern, t)]
    if first_poll:
        newest = ordered(matching)[-1] if matching else None
        return PollPlan((), newest, why=f"baseline {newest or '(no matching tag yet)'}")
    done = set(already_run)
    newer = newer_than(matching, last_tag)
    new = [t for t in newer if t not in done]
    if not new:
        return PollPlan((), newer[-1] if newer else last_tag, why="no new tag")
    if policy is ConcurrencyPolicy.REPLACE:
        return PollPlan((new[-1],), new[-1], superseded=tuple(new[:-1]), why="newest new tag")
    if policy is ConcurrencyPolicy.FORBID:
        if busy:
            return PollPlan((), last_tag, waiting=tuple(new), why="a run is active (Forbid)")
        return PollPlan((new[0],), new[0], waiting=tuple(new[1:]), why="oldest new tag")
    return PollPlan(tuple(new), new[-1], why="every new tag")


def remember(recent: Sequence[str] | None, *tags: str) -> list[str]:
    """RecentTags with ``tags`` appended (newest last), bounded to the last 50."""
    kept = [t for t in recent or [] if t not in tags]
    return [*kept, *tags][-MAX_RECENT_TAGS:]
