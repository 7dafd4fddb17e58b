"""How ``kubectl kloop`` shows Loops and runs: rich tables, and JSON or YAML for scripts.

Pure (objects in, renderables or text out; ``now`` is passed in). Everything that comes from the
cluster is wrapped in :class:`rich.text.Text`, so a maker's summary such as ``[red]`` is shown as
written, never read as rich markup.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import yaml
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kloop.core import names

Json = dict[str, Any]
FORMATS = ("json", "yaml")
PHASE_STYLE = {
    "Succeeded": "green",
    "Failed": "red",
    "Halted": "red",
    "AwaitingApproval": "yellow",
    "Paused": "yellow",
    "Running": "cyan",
}
VERDICT_STYLE = {"pass": "green", "fail": "red", "error": "red", "inconclusive": "yellow"}


def dump(obj: Any, fmt: str) -> str:
    """``obj`` as JSON or YAML, without managedFields (as kubectl shows objects)."""
    clean = _without_managed_fields(obj)
    if fmt == "json":
        return json.dumps(clean, indent=2, ensure_ascii=False)
    return yaml.safe_dump(clean, sort_keys=False, allow_unicode=True).rstrip("\n")


def as_list(items: list[Json]) -> Json:
    """Several objects as one ``List``, as ``kubectl get -o json`` prints them."""
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _without_managed_fields(obj: Any) -> Any:
    out = copy.deepcopy(obj)
    for item in out.get("items", [out]) if isinstance(out, dict) else []:
        if isinstance(item, dict):
            (item.get("metadata") or {}).pop("managedFields", None)
    return out


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp from the API, or None."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def age(text: str | None, now: datetime) -> str:
    """Kubectl's short age: 42s, 5m, 3h, 2d (``<unknown>`` without a time)."""
    then = parse_time(text)
    if then is None:
        return "<unknown>"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= 120):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cell(value: Any, style: str = "") -> Text:
    return Text("" if value is None else str(value), style=style)


def _phase(phase: str | None) -> Text:
    return _cell(phase or "-", PHASE_STYLE.get(phase or "", ""))


def _plain_table(*columns: str) -> Table:
    """Kubectl's look: upper-case headers, no borders."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def loops_table(loops: list[Json], now: datetime) -> Table:
    """``get loops``: schedule, the last run and its phase, active runs, age."""
    table = _plain_table("NAME", "SCHEDULE", "SUSPEND", "LAST RUN", "PHASE", "ACTIVE", "AGE")
    for loop in loops:
        spec, st = loop.get("spec") or {}, loop.get("status") or {}
        table.add_row(
            _cell(loop["metadata"]["name"]),
            _cell(spec.get("schedule") or "-"),
            _cell(str(bool(spec.get("suspend"))).lower() if spec.get("schedule") else "-"),
            _cell(st.get("lastRun") or "-"),
            _phase(st.get("phase")),
            _cell(len(st.get("active") or [])),
            _cell(age(loop["metadata"].get("creationTimestamp"), now)),
        )
    return table


def usage_text(st: Json, wall: bool = True) -> str:
    """Tokens, cost and wall time, e.g. ``200 tokens, $0.0200, 12s``."""
    usage = st.get("usage") or {}
    text = f"{usage.get('tokens', 0)} tokens, ${usage.get('costUSD', 0.0):.4f}"
    return f"{text}, {usage.get('wallSeconds', 0.0):.0f}s" if wall else text


def runs_table(runs: list[Json], now: datetime) -> Table:
    """``get runs``: one line per LoopRun, like ``kubectl get loopruns`` with usage."""
    table = _plain_table(
        "NAME", "LOOP", "PHASE", "STAGE", "ITERATION", "VERDICT", "TOKENS", "COST", "AGE"
    )
    for run in runs:
        st = run.get("status") or {}
        usage = st.get("usage") or {}
        verdict = st.get("lastVerdict")
        table.add_row(
            _cell(run["metadata"]["name"]),
            _cell(((run.get("spec") or {}).get("loopRef") or {}).get("name")),
            _phase(st.get("phase")),
            _cell(st.get("stage") or "-"),
            _cell(st.get("iteration", 0)),
            _cell(verdict or "-", VERDICT_STYLE.get(verdict or "", "")),
            _cell(usage.get("tokens", 0)),
            _cell(f"${usage.get('costUSD', 0.0):.4f}"),
            _cell(age(run["metadata"].get("creationTimestamp"), now)),
        )
    return table


def _verdicts(record: Json) -> Text:
    text = Text()
    for i, checker in enumerate(record.get("checkers") or []):
        if i:
            text.append("\n")
        verdict = checker.get("verdict") or "-"
        text.append(f"{checker.get('name')}: ")
        text.append(verdict, style=VERDICT_STYLE.get(verdict, ""))
        reasons = "; ".join(checker.get("reasons") or [])
        if reasons:
            text.append(f" — {reasons}")
    return text


def _maker(record: Json) -> Text:
    maker = record.get("maker")
    if not maker:
        return Text("-")
    text = Text(maker.get("outcome") or "-", style="bold")
    if maker.get("summary"):
        text.append(f": {maker['summary']}", style="")
    return text


def iterations_table(run: Json) -> Table:
    """The iteration history: stage, cluster, maker summary, verdicts, decision and why."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    for column in ("#", "STAGE", "CLUSTER", "MAKER", "VERDICTS", "DECISION", "WHY"):
        table.add_column(column, overflow="fold")
    for record in (run.get("status") or {}).get("iterations") or []:
        decision = record.get("decision")
        table.add_row(
            _cell(record.get("number")),
            _cell(record.get("stage")),
            _cell(record.get("cluster")),
            _maker(record),
            _verdicts(record),
            _cell(decision or "(open)", "bold" if decision else "dim"),
            _cell(record.get("why") or ""),
        )
    return table


def stages_table(run: Json) -> Table:
    """Each stage and each of its clusters: state, iterations, why it ended, who approved."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    for column in ("STAGE", "STATE", "CLUSTER", "CLUSTER STATE", "ITERATIONS", "DETAIL"):
        table.add_column(column, overflow="fold")
    for stage in (run.get("status") or {}).get("stages") or []:
        approved = f"approved by {stage['approvedBy']}" if stage.get("approvedBy") else ""
        clusters = stage.get("clusters") or [{}]
        for i, cluster in enumerate(clusters):
            detail = [
                approved if i == 0 else "",
                cluster.get("reason") or "",
                cluster.get("message") or "",
            ]
            if cluster.get("resumedBy"):
                detail.append(f"resumed by {cluster['resumedBy']}")
            table.add_row(
                _cell(stage.get("name") if i == 0 else ""),
                _phase(stage.get("state")) if i == 0 else Text(""),
                _cell(cluster.get("name") or "-"),
                _phase(cluster.get("state")),
                _cell(cluster.get("iterations", 0) if cluster else ""),
                _cell(" · ".join(d for d in detail if d)),
            )
    return table


def _facts(rows: list[tuple[str, Any]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        if value not in (None, ""):
            table.add_row(f"{key}:", value if isinstance(value, Text) else _cell(value))
    return table


def connectors_text(st: Json) -> str | None:
    """One line per connector: what its latest MCP handshake found (never a header value)."""
    lines = []
    for c in st.get("connectors") or []:
        if c.get("ready"):
            found = (
                f"{c.get('serverName') or '?'} (MCP {c.get('protocolVersion') or '?'}, "
                f"{c.get('toolCount', 0)} tools)"
            )
        else:
            found = f"unavailable: {c.get('message') or '?'}"
        lines.append(f"{c['name']}: {found}, checked for stage {c.get('stage')}")
    return "\n".join(lines) or None


def describe_run(run: Json) -> RenderableType:
    """``describe``: the run's facts, its stages and its iteration history."""
    meta, spec, st = run["metadata"], run.get("spec") or {}, run.get("status") or {}
    teardown = st.get("teardown") or {}
    earlier = st.get("earlierIterations") or {}
    facts = _facts(
        [
            ("Name", meta["name"]),
            ("Namespace", meta.get("namespace")),
            ("Loop", (spec.get("loopRef") or {}).get("name")),
            ("Phase", _phase(st.get("phase"))),
            ("Stage", st.get("stage")),
            ("Iteration", st.get("iteration")),
            ("Last verdict", st.get("lastVerdict")),
            ("Usage", usage_text(st)),
            ("Started", st.get("startedAt")),
            ("Finished", st.get("finishedAt")),
            ("Halt reason", st.get("haltReason")),
            ("Message", st.get("message")),
            ("Context", json.dumps(spec["context"]) if spec.get("context") else None),
            ("Connectors", connectors_text(st)),
            (
                "Teardown",
                f"{teardown.get('state')}"
                + (f" ({teardown['pod']})" if teardown.get("pod") else "")
                + (f": {teardown['message']}" if teardown.get("message") else "")
                if teardown
                else None,
            ),
        ]
    )
    parts: list[RenderableType] = [facts, Text("\nStages", style="bold"), stages_table(run)]
    parts.append(Text("\nIterations", style="bold"))
    if earlier.get("iterations"):
        parts.append(
            Text(
                f"({earlier['iterations']} earlier iterations folded: {earlier.get('passed', 0)} "
                f"passed, {earlier.get('failed', 0)} failed; the Loop's memory has them)",
                style="dim",
            )
        )
    if st.get("iterations"):
        parts.append(iterations_table(run))
    else:
        parts.append(Text("(none yet)", style="dim"))
    return Group(*parts)


def progress_line(run: Json) -> str:
    """One line per change while watching without a terminal (logs, CI).

    Without the wall time, which changes at every poll.
    """
    st = run.get("status") or {}
    return (
        f"{run['metadata']['name']}: {st.get('phase') or 'Pending'} "
        f"stage={st.get('stage') or '-'} iteration={st.get('iteration', 0)} "
        f"verdict={st.get('lastVerdict') or '-'} {usage_text(st, wall=False)}"
        + (f" | {st['message']}" if st.get("message") else "")
    )


def progress(run: Json, hint: str | None = None) -> RenderableType:
    """The live view of ``watch``: a headline, the stages and the latest iterations."""
    st = run.get("status") or {}
    head = Text.assemble(
        (run["metadata"]["name"], "bold"),
        "  ",
        _phase(st.get("phase") or "Pending"),
        f"  stage {st.get('stage') or '-'}  iteration {st.get('iteration', 0)}  ",
        usage_text(st),
    )
    parts: list[RenderableType] = [head]
    if st.get("message"):
        parts.append(Text(st["message"], style="dim"))
    if hint:
        parts.append(Text(hint, style="yellow"))
    if st.get("stages"):
        parts.append(stages_table(run))
    if st.get("iterations"):
        latest = {**run, "status": {**st, "iterations": st["iterations"][-5:]}}
        parts.append(iterations_table(latest))
    return Group(*parts)


def pod_header(pod: Json) -> str:
    """What ``logs`` prints above each pod: its name and what it was in the run."""
    labels = pod["metadata"].get("labels") or {}
    what = labels.get(names.LABEL_ROLE, "?")
    if labels.get(names.LABEL_CHECKER):
        what += f" {labels[names.LABEL_CHECKER]}"
    phase = (pod.get("status") or {}).get("phase") or "Unknown"
    return (
        f"==> {pod['metadata']['name']} ({what}, iteration {labels.get(names.LABEL_ITERATION)}, "
        f"stage {labels.get(names.LABEL_STAGE)}, cluster {labels.get(names.LABEL_CLUSTER)}, "
        f"{phase}) <=="
    )


def now() -> datetime:
    """The current time (UTC), for ages."""
    return datetime.now(UTC)
