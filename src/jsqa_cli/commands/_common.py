"""What every command shares: consoles, one-line errors, exit codes, the options every command spells the same.

Nothing here imports torch or the library modules at import time: ``jsqa --help`` and every ``--help`` stay fast.
"""

from __future__ import annotations

import functools
import re
import sys

import typer
from rich.console import Console
from rich.markup import escape

# Exit codes, documented in the README: 0 all good, 1 some inputs failed (others done), 2 usage or setup error.
EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

# soft_wrap: a line of text (a note, a path) is printed whole, never broken at the console's width (80 columns in a
# log or a pipe) where it could not be pasted back or matched by grep; tables still fit the width
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

DEVICE_HELP = "auto, cpu, cuda or cuda:N (auto: the GPU when there is one; torchrun sets the GPU of each rank)."
WORKERS_HELP = (
    "Worker processes that read and prepare audio beside the main process (0: all in the main process). "
    "Default: one per CPU core beyond the first, at most 8 (per process under torchrun); half that when the "
    "model runs on the CPU, whose threads need the cores too."
)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print ``Error: message`` as one line on stderr and exit. The message is printed as it is (no rich markup),
    so paths and hints holding ``[...]`` come out intact."""
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def check_device(device: str) -> str:
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device that does not exist is refused here,
    in one line (exit 2), before any file is read or any model is built."""
    device = device.strip().lower()
    if not _DEVICE.match(device):
        fail(f"--device {device!r}: choose auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            fail(f"--device {device}: no CUDA GPU is available here (use --device cpu or auto)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            fail(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_workers(workers: int | None, device: str | None = None) -> int:
    """``--workers/-j``, one meaning in every command: ``None`` (not given) → ``distributed.default_workers`` for
    a command whose model runs on ``device`` (None: no model in the main process); a negative number is refused."""
    if workers is None:
        from jsqa_cli.distributed import default_workers

        return default_workers(device)
    if workers < 0:
        fail(f"--workers {workers}: give 0 (all in the main process) or more worker processes")
    return workers


def one_line_errors(func):
    """Turn the library's expected errors, and the system's refusals (a path that cannot be read or written, a full
    disk), into one-line messages and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from jsqa_cli.audio import AudioError  # imported on call, not at `--help`: these import torch
        from jsqa_cli.model import ModelError

        try:
            return func(*args, **kwargs)
        except OSError as e:
            if e.filename is None or not e.strerror:  # the library's own message
                fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
            fail(f"{e.filename}: {e.strerror[:1].lower()}{e.strerror[1:]}")  # not "[Errno 13] Permission denied: …"
        except (ModelError, AudioError, ValueError) as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except KeyboardInterrupt:
            err_console.print("Interrupted.", highlight=False)
            sys.exit(130)

    return wrapper
