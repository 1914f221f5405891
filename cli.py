"""How every command of the project ends, written once.

Bad input (a data file, a model name, a run directory) ends with one line naming what is wrong and exit 2;
a training run whose loss or gradient turned NaN/inf ends with one line and exit 1 (its last good checkpoint
kept); a run stopped by SIGTERM or SIGINT ends, once its checkpoint is written, with one line saying how to
resume and exit 128 + the signal. None prints a traceback. Every other exception is a bug, and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable


class BadInput(Exception):
    """Input the user can fix; the message names the file, record and field (or the flag) at fault."""


class Stopped(Exception):
    """A training run stopped by a signal after writing its checkpoint; the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.status = 128 + signum   # the shell's convention for a process ended by signal `signum`


def run_cli(body: Callable[[], object]) -> int:
    """Run a command's body and return its exit status: 0, 2 for BadInput, 1 for a run that turned NaN/inf,
    128 + the signal for a run a signal stopped."""
    try:
        body()
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return e.status
    return 0
