"""``kubectl kloop``: the human interface to Loops and LoopRuns (see docs/cli.md).

kubectl runs any ``kubectl-<name>`` executable on PATH as ``kubectl <name>``; the package installs
``kubectl-kloop``. This module only maps errors to exit codes; the commands are in
:mod:`kloop.cli.commands`.
"""

from __future__ import annotations

import sys

from rich.console import Console

from kloop.cli.exits import CliError, ExitCode


def main() -> None:
    """Entry point of the ``kubectl-kloop`` executable: run a command, exit with its code."""
    from kloop.cli.commands import app  # after the imports above: a broken install shows here

    try:
        app(prog_name="kubectl kloop")
    except CliError as err:
        Console(stderr=True).print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(int(err.code))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(int(ExitCode.OK))


if __name__ == "__main__":
    main()
