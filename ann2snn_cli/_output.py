"""One output object per command: results on stdout (Rich tables, or JSON), progress and diagnostics on
stderr. `--json FILE` writes the same figures as the tables; `--json -` writes them to stdout instead of
the tables and silences progress."""
from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rewrites.graph import writable_target, write_text_atomic


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Output:
    def __init__(self, json_target: str | None = None, width: int | None = None):
        self.json_target = json_target
        self.json_to_stdout = json_target == "-"
        if json_target and not self.json_to_stdout:
            writable_target(json_target)  # refused before the work, not after it
        self.console = Console(width=width, quiet=self.json_to_stdout, soft_wrap=False)
        self.err = Console(stderr=True, width=width)

    def print(self, *items: Any) -> None:
        self.console.print(*items)

    def note(self, text: str) -> None:
        self.err.print(text, markup=False, highlight=False)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        table = Table(title=title, title_justify="left")
        for c in columns:
            first = c in columns[:1]
            table.add_column(c, justify="left" if first else "right", overflow="fold" if first else "ellipsis")
        for row in rows:
            table.add_row(*[_fmt(v) for v in row])
        self.console.print(table)

    def emit_json(self, data: dict) -> None:
        if not self.json_target:
            return
        text = json.dumps(_clean(data), indent=1)
        if self.json_to_stdout:
            sys.stdout.write(text + "\n")
        else:
            write_text_atomic(Path(self.json_target), text + "\n")

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
        """A progress bar on stderr when it is a terminal and JSON does not go to stdout."""
        if self.json_to_stdout or not self.err.is_terminal:
            yield lambda done, total: None
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done, total: bar.update(task, completed=done, total=total)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
