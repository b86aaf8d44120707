"""What every command shares: consoles, one-line errors, exit codes."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

# Exit codes, documented in the README: 0 all good, 1 some inputs failed (others done), 2 usage or setup error.
EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print ``Error: message`` as one line on stderr and exit."""
    err_console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def one_line_errors(func):
    """Turn the library's expected errors into one-line messages and exit code 2, never a traceback."""
    from jsqa_cli.audio import AudioError
    from jsqa_cli.model import ModelError

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ModelError, AudioError, FileNotFoundError, NotADirectoryError, ValueError) as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except KeyboardInterrupt:
            err_console.print("Interrupted.", highlight=False)
            sys.exit(130)

    return wrapper
