"""The ``kubectl kloop`` commands (typer): read the cluster, decide (actions), show (render)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown

from kloop.adapters.launch import new_run
from kloop.cli import actions, render
from kloop.cli.client import Cluster, Json, Target
from kloop.cli.exits import CliError, Conflict, ExitCode, outcome_code
from kloop.core.launch import RunRequest
from kloop.core.memory import LOG_KEY, MEMORY_KEY, empty_log

POLL_SECONDS = 1.0
WIDE = 200  # columns when stdout is not a terminal: a pipe gets whole lines, as from kubectl


class Output(StrEnum):
    """``-o``: machine-readable output."""

    JSON = "json"
    YAML = "yaml"


class Kind(StrEnum):
    """What ``get`` lists."""

    LOOPS = "loops"
    RUNS = "runs"


class Role(StrEnum):
    """Pod roles ``logs`` can pick."""

    MAKER = "maker"
    CHECKER = "checker"
    TEARDOWN = "teardown"


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, soft_wrap=False)
    if not console.is_terminal and console.width <= 80:
        console = Console(stderr=stderr, soft_wrap=False, width=WIDE)
    return console


out = _console()
err = _console(stderr=True)

app = typer.Typer(
    name="kubectl kloop",
    help=(
        "Drive kloop Loops and LoopRuns: list, start, approve, resume, abort, watch and read "
        "their history, memory and logs.\n\n"
        "Global options go before the command; -n/--namespace works after it too. "
        "Exit codes: 0 ok (run Succeeded), 1 error, 2 usage, 3 not found, 4 forbidden, "
        "5 cluster unreachable, 6 timed out, 10 run Failed, 11 run Halted (docs/cli.md)."
    ),
    rich_markup_mode="markdown",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        "-n", "--namespace", help="Namespace (default: the kubeconfig context's namespace)."
    ),
]
OutputOpt = Annotated[
    Output | None, typer.Option("-o", "--output", help="Print the object(s) as json or yaml.")
]
RunArg = Annotated[str, typer.Argument(help="The LoopRun's name.", show_default=False)]
LoopArg = Annotated[str, typer.Argument(help="The Loop's name.", show_default=False)]


def _examples(*lines: str) -> str:
    """An epilog listing examples, one per line (markdown mode joins lines not kept apart)."""
    return "**Examples**\n\n" + "\n\n".join(f"`{line}`" for line in lines)


@app.callback()
def _root(
    ctx: typer.Context,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            "--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)."
        ),
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="Kubeconfig context (default: the current).")
    ] = None,
    namespace: NamespaceOpt = None,
) -> None:
    ctx.obj = Target(kubeconfig, context, namespace)


def _cluster(ctx: typer.Context, namespace: str | None) -> Cluster:
    target: Target = ctx.obj
    if namespace:
        target = Target(target.kubeconfig, target.context, namespace)
    return Cluster(target)


def _say(console: Console, text: str) -> None:
    """One plain line, never wrapped at the console's width: scripts and logs read it whole."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _print(obj: object, fmt: Output) -> None:
    sys.stdout.write(render.dump(obj, fmt.value) + "\n")


def _whoami_or_none(cluster: Cluster) -> str | None:
    """Who is asking, for the record only (never a reason to fail)."""
    try:
        return cluster.whoami()
    except CliError:
        return None


@app.command(
    epilog=_examples(
        "kubectl kloop get",
        "kubectl kloop get loops -n team-a",
        "kubectl kloop get runs --loop nightly -o yaml",
    )
)
def get(
    ctx: typer.Context,
    kind: Annotated[Kind, typer.Argument(help="loops or runs.")] = Kind.RUNS,
    loop: Annotated[
        str | None, typer.Option("-l", "--loop", help="Only the runs of this Loop.")
    ] = None,
    output: OutputOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """List Loops or LoopRuns (runs by default), oldest first."""
    cluster = _cluster(ctx, namespace)
    plural = "loops" if kind is Kind.LOOPS else "loopruns"
    items = sorted(
        cluster.list_all(plural),
        key=lambda o: (o["metadata"].get("creationTimestamp") or "", o["metadata"]["name"]),
    )
    if loop and kind is Kind.RUNS:
        items = [
            r for r in items if ((r.get("spec") or {}).get("loopRef") or {}).get("name") == loop
        ]
    if output:
        _print(render.as_list(items), output)
        return
    if not items:
        _say(err, f'No {kind.value} found in namespace "{cluster.namespace}".')
        return
    now = render.now()
    out.print(
        render.loops_table(items, now) if kind is Kind.LOOPS else render.runs_table(items, now)
    )


@app.command(
    epilog=_examples(
        "kubectl kloop describe nightly-manual-20260301-101500",
        "kubectl kloop describe nightly-29500000 -o yaml",
    )
)
def describe(
    ctx: typer.Context, run: RunArg, output: OutputOpt = None, namespace: NamespaceOpt = None
) -> None:
    """Show a run: phase, usage, stages, and its iterations (maker, verdicts, decision, why)."""
    found = _cluster(ctx, namespace).get("loopruns", run)
    if output:
        _print(found, output)
        return
    out.print(render.describe_run(found))


@app.command(
    name="run",
    epilog=_examples(
        "kubectl kloop run nightly",
        "kubectl kloop run nightly --context ticket=OPS-42 --context branch=main --wait",
        'RUN=$(kubectl kloop run nightly) && kubectl kloop watch "$RUN"',
    ),
)
def run_loop(
    ctx: typer.Context,
    loop: LoopArg,
    context: Annotated[
        list[str] | None,
        typer.Option(
            "-c",
            "--context",
            help="key=value for the run's context (KLOOP_CONTEXT); repeatable.",
            metavar="KEY=VALUE",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="The run's name (default: LOOP-manual-YYYYMMDD-HHMMSS, UTC)."),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("-w", "--wait", help="Wait for the run to end; exit with its outcome."),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            help="With --wait: give up after this many seconds (exit 6).",
            show_default=False,
        ),
    ] = 0,
    namespace: NamespaceOpt = None,
) -> None:
    """Start a run of a Loop now and print its name (like kubectl create job --from=cronjob/x).

    The run is owned by its Loop, so the Loop's history limits apply to it. It starts whatever
    the Loop's concurrencyPolicy says: that policy governs schedules and triggers, not people.
    Before the command, --context picks the kubeconfig context:
    kubectl kloop --context prod run nightly --context ticket=OPS-1.
    """
    pairs = actions.parse_context(context or [])
    cluster = _cluster(ctx, namespace)
    found = cluster.get("loops", loop)
    request = actions.manual_run(loop, pairs, _whoami_or_none(cluster), render.now())
    if name:
        request = RunRequest(name, request.cause, request.context, request.annotations)
    created = cluster.create_run(new_run(found, request))
    run_name = created["metadata"]["name"]
    _say(out, run_name)
    if wait:
        finished = _follow(cluster, run_name, timeout, err)
        raise typer.Exit(outcome_code((finished.get("status") or {}).get("phase")))


def _forbidden_hint(error: CliError, what: str) -> CliError:
    if error.code is not ExitCode.FORBIDDEN:
        return error
    return CliError(
        f"{error}\n{what} needs get and patch on loopruns and the approve verb "
        "(the approver ClusterRole); see docs/admission.md",
        error.code,
    )


@app.command(
    epilog=_examples(
        "kubectl kloop approve nightly-29500000",
        "kubectl kloop approve nightly-29500000 --stage prod",
    )
)
def approve(
    ctx: typer.Context,
    run: RunArg,
    stage: Annotated[
        str | None,
        typer.Option("-s", "--stage", help="The stage (default: the one the run waits at)."),
    ] = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Approve a stage as yourself: sets kloop.dev/approve and approved-by (your username).

    Your username is what the apiserver says you are (a SelfSubjectReview, as kubectl auth
    whoami). The kloop-approvals admission policy refuses the approval unless you may approve.
    """
    cluster = _cluster(ctx, namespace)
    found = cluster.get("loopruns", run)
    chosen = actions.stage_to_approve(found, stage)
    for progress in actions.status(found).get("stages") or []:
        if progress.get("name") == chosen and progress.get("approvedBy"):
            _say(out, f'stage "{chosen}" of {run} was already approved by {progress["approvedBy"]}')
            return
    user = cluster.whoami()
    try:
        _annotate_fresh(cluster, run, found, lambda r: actions.approval(r, chosen, user))
    except CliError as error:
        raise _forbidden_hint(error, "Approving") from error
    _say(out, f'approved stage "{chosen}" of {run} as {user}')


CONFLICT_RETRIES = 5


def _annotate_fresh(
    cluster: Cluster, run: str, found: Json, build: Callable[[Json], dict[str, str]]
) -> None:
    """Patch annotations built from the run as read, re-reading it while someone else wins.

    approve and resume extend comma lists (stages, iterations): a patch bound to the version
    read means a concurrent approval of another stage is kept, never overwritten.
    """
    for _ in range(CONFLICT_RETRIES):
        try:
            cluster.annotate_run(run, build(found), found["metadata"].get("resourceVersion"))
            return
        except Conflict:
            found = cluster.get("loopruns", run)
    raise CliError(f"LoopRun {run} kept changing: try again")


@app.command(epilog=_examples("kubectl kloop abort nightly-29500000"))
def abort(ctx: typer.Context, run: RunArg, namespace: NamespaceOpt = None) -> None:
    """Abort a run: it ends Halted (reason Aborted) and its teardown runs."""
    cluster = _cluster(ctx, namespace)
    found = cluster.get("loopruns", run)
    phase = actions.status(found).get("phase")
    if phase in actions.FINAL_PHASES:
        _say(out, f"{run} already finished ({phase}): nothing to abort")
        return
    cluster.annotate_run(run, actions.abortion(_whoami_or_none(cluster)))
    _say(out, f"abort requested for {run}; its teardown will run")


@app.command(
    epilog=_examples(
        "kubectl kloop resume nightly-29500000",
        "kubectl kloop resume nightly-29500000 --iteration 4",
    )
)
def resume(
    ctx: typer.Context,
    run: RunArg,
    iteration: Annotated[
        int | None,
        typer.Option(
            "-i", "--iteration", help="The paused iteration (needed when several are paused)."
        ),
    ] = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Resume a run paused by an inconclusive verdict: its target counts as passed.

    Resuming is approving: kloop.dev/resumed-by is set to your username, and the kloop-approvals
    admission policy checks you may approve.
    """
    cluster = _cluster(ctx, namespace)
    found = cluster.get("loopruns", run)
    number = actions.iteration_to_resume(found, iteration)
    user = cluster.whoami()
    try:
        _annotate_fresh(cluster, run, found, lambda r: actions.resumption(r, number, user))
    except CliError as error:
        raise _forbidden_hint(error, "Resuming") from error
    _say(out, f"resumed iteration {number} of {run} as {user}")


@app.command(
    epilog=_examples(
        "kubectl kloop memory nightly",
        "kubectl kloop memory nightly -o json | jq '.entries[-1]'",
    )
)
def memory(
    ctx: typer.Context, loop: LoopArg, output: OutputOpt = None, namespace: NamespaceOpt = None
) -> None:
    """Show a Loop's memory: the markdown its agents read, or the log as json or yaml."""
    cluster = _cluster(ctx, namespace)
    found = cluster.get("loops", loop)
    name = ((found.get("spec") or {}).get("memory") or {}).get("configMapName") or f"{loop}-memory"
    cm = cluster.config_map(name)
    data = (cm or {}).get("data") or {}
    if output:
        log = json.loads(data[LOG_KEY]) if data.get(LOG_KEY) else empty_log()
        _print(log, output)
        return
    if not data.get(MEMORY_KEY):
        _say(err, f"Loop {loop} has no memory yet (ConfigMap {name} is empty or absent).")
        return
    if out.is_terminal:
        out.print(Markdown(data[MEMORY_KEY]))
    else:
        sys.stdout.write(data[MEMORY_KEY].rstrip("\n") + "\n")


@app.command(
    epilog=_examples(
        "kubectl kloop logs nightly-29500000",
        "kubectl kloop logs nightly-29500000 --iteration 2 --role checker",
        "kubectl kloop logs nightly-29500000 --cluster fleet-a --role maker",
    )
)
def logs(
    ctx: typer.Context,
    run: RunArg,
    iteration: Annotated[
        int | None, typer.Option("-i", "--iteration", help="Only this iteration.")
    ] = None,
    role: Annotated[Role | None, typer.Option("-r", "--role", help="Only this role.")] = None,
    cluster_name: Annotated[
        str | None, typer.Option("--cluster", help="Only pods for this target cluster.")
    ] = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Print the logs of a run's pods, oldest first, each under a header.

    Pods placed in a remote target cluster (checkers with placement Target) are not here.
    """
    cluster = _cluster(ctx, namespace)
    cluster.get("loopruns", run)
    selector = actions.pod_selector(run, iteration, role.value if role else None, cluster_name)
    pods = actions.oldest_first(cluster.pods(selector))
    if not pods:
        raise CliError(f"no pods of {run} match {selector}", ExitCode.NOT_FOUND)
    for i, pod in enumerate(pods):
        sys.stdout.write(("\n" if i else "") + render.pod_header(pod) + "\n")
        containers = [c["name"] for c in pod["spec"].get("containers") or []]
        for container in containers:
            if len(containers) > 1:
                sys.stdout.write(f"--- container {container}\n")
            try:
                text = cluster.pod_log(pod["metadata"]["name"], container)
            except CliError as error:
                text = f"(no log: {error})\n"
            text = text or "(empty log)\n"
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        sys.stdout.flush()


def _hint(found: Json) -> str | None:
    """What a person may do for a run that waits on one."""
    st, name = actions.status(found), found["metadata"]["name"]
    if st.get("phase") == "AwaitingApproval":
        return f"waiting for approval: kubectl kloop approve {name} --stage {st.get('stage')}"
    if st.get("phase") == "Paused":
        paused = ", ".join(str(n) for n in actions.paused_iterations(found))
        return f"paused (iteration {paused}): kubectl kloop resume {name}, or abort it"
    return None


UNREACHABLE_GRACE_SECONDS = 30.0


def _reread(cluster: Cluster, run: str) -> Json:
    """The run again; a cluster that stops answering for a moment is waited for, not fatal.

    A watch lasts as long as the run (hours, maybe); an apiserver restart or a network blip in
    between must not end it with exit 5. Past the grace period it does.
    """
    given_up = time.monotonic() + UNREACHABLE_GRACE_SECONDS
    while True:
        try:
            return cluster.get("loopruns", run)
        except CliError as error:
            if error.code != ExitCode.UNREACHABLE or time.monotonic() >= given_up:
                raise
            time.sleep(POLL_SECONDS)


def _follow(cluster: Cluster, run: str, timeout: float, console: Console) -> Json:
    """Poll the run until it finished, showing progress; the finished run.

    A terminal gets a live view; anything else one line per change.
    """
    deadline = time.monotonic() + timeout if timeout > 0 else None
    found = cluster.get("loopruns", run)
    last = ""
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    if live:
        live.start()
    try:
        while True:
            if live:
                live.update(render.progress(found, _hint(found)), refresh=True)
            else:
                line = render.progress_line(found)
                if line != last:
                    _say(console, line)
                last = line
            if actions.is_finished(found):
                return found
            if deadline is not None and time.monotonic() >= deadline:
                raise CliError(
                    f"{run} still {actions.status(found).get('phase') or 'Pending'} "
                    f"after {timeout:g}s",
                    ExitCode.TIMEOUT,
                )
            time.sleep(POLL_SECONDS)
            found = _reread(cluster, run)
    finally:
        if live:
            live.stop()


@app.command(
    epilog=_examples(
        "kubectl kloop watch nightly-29500000",
        "kubectl kloop watch nightly-29500000 --timeout 600 && echo deployed",
    )
)
def watch(
    ctx: typer.Context,
    run: RunArg,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", help="Give up after this many seconds (exit 6).", show_default=False
        ),
    ] = 0,
    namespace: NamespaceOpt = None,
) -> None:
    """Follow a run live until it ends; the exit code is its outcome (0, 10 Failed, 11 Halted)."""
    cluster = _cluster(ctx, namespace)
    finished = _follow(cluster, run, timeout, out)
    phase = actions.status(finished).get("phase")
    _say(out, f"{run} {phase}: {actions.status(finished).get('message') or ''}")
    raise typer.Exit(outcome_code(phase))
