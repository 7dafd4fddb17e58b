"""Exit codes of ``kubectl kloop`` and the one error type commands raise (docs/cli.md lists them).

Scripts branch on these, so each cause has its own code and a run's outcome is kept apart from
the tool's own errors (10 and up).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What the process exit status means."""

    OK = 0
    """Done; for ``watch`` and ``run --wait``: the run Succeeded."""
    ERROR = 1
    """Any other error (the apiserver's message is printed)."""
    USAGE = 2
    """Wrong arguments or options."""
    NOT_FOUND = 3
    """The Loop, LoopRun or pod does not exist (or kloop's CRDs are not installed)."""
    FORBIDDEN = 4
    """RBAC or an admission policy refused the request."""
    UNREACHABLE = 5
    """No usable kubeconfig or context, the cluster cannot be reached, or it refused the
    credentials."""
    TIMEOUT = 6
    """``--timeout`` passed before the run finished."""
    RUN_FAILED = 10
    """The run ended Failed."""
    RUN_HALTED = 11
    """The run ended Halted (a budget, the deadline, MaxIterations, an abort)."""


class CliError(Exception):
    """An error to print on stderr (no traceback) and exit with ``code``."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


def outcome_code(phase: str | None) -> ExitCode:
    """The exit code for a finished run's phase."""
    if phase == "Succeeded":
        return ExitCode.OK
    if phase == "Halted":
        return ExitCode.RUN_HALTED
    return ExitCode.RUN_FAILED


class Conflict(CliError):
    """The object changed since it was read (HTTP 409): read it again and retry."""
