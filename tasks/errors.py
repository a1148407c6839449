"""How a stage fails: a clear message and an exit code the drivers understand.

Exit codes of `python -m tasks.<stage>`:
    2   bad input (file, column or param named in the message): do not retry
    75  transient I/O error (EX_TEMPFAIL): the Prefect flow retries the stage
"""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

T = TypeVar("T")

EXIT_INPUT = 2
EXIT_TRANSIENT = 75


class InputError(ValueError):
    """A user-controlled input is wrong; the message names it and says what was expected."""


class TransientIOError(OSError):
    """An I/O failure worth retrying (a source that may be back in a moment)."""


def run_main(body: Callable[[], T]) -> T:
    """Run a stage's main body, turning known failures into one-line errors."""
    try:
        return body()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INPUT)
    except TransientIOError as e:
        print(f"error (transient, may be retried): {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_TRANSIENT)
