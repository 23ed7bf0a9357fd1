"""Process-wide CLI settings (set by global options) and the one place errors become exit codes."""
from __future__ import annotations

import sys
import traceback
import warnings
from contextlib import contextmanager
from typing import Iterator

import typer

from ground.errors import Ann2SnnError

EXIT_OK, EXIT_GATE, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
debug = False


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _traceback_if_debug() -> None:
    """With --debug, the traceback of the error being handled; the exit code stays the error's."""
    if debug:
        traceback.print_exc(file=sys.stderr)


@contextmanager
def errors_to_exit_codes() -> Iterator[None]:
    """Library errors -> `error: ...` on stderr and exit 2; unexpected ones -> exit 3. Tracebacks with --debug.
    NumPy's RuntimeWarnings (overflow, invalid value) are silenced unless --debug: a broken model reports
    through its error, not through warning lines around it."""
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore", RuntimeWarning)
            yield
    except typer.Exit:
        raise
    except Ann2SnnError as exc:
        _traceback_if_debug()
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except OSError as exc:
        _traceback_if_debug()
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{_one_line(exc.strerror or str(exc))}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:
        _traceback_if_debug()
        print(f"error: internal error: {type(exc).__name__}: {_one_line(str(exc))[:300]} "
              "(rerun with --debug for the traceback and report it)", file=sys.stderr)
        raise typer.Exit(EXIT_INTERNAL) from None
