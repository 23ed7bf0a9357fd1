"""One output object per command: results on stdout (Rich tables, or JSON), progress and diagnostics on
stderr. `--json FILE` writes the same figures as the tables; `--json -` writes them to stdout instead of
the tables and silences progress."""
from __future__ import annotations

import io
import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text



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
            from ground.save import writable_target  # lazy: onnx and numpy load only when a command runs
            writable_target(json_target)  # refused before the work, not after it
        self.console = Console(width=width, quiet=self.json_to_stdout, soft_wrap=False, highlight=False)
        self.err = Console(stderr=True, width=width, highlight=False)

    def print(self, text: str) -> None:
        """A plain line: no Rich markup, no highlighting (names and paths print as they are)."""
        self.console.print(text, markup=False, highlight=False)

    def heading(self, bold: str, rest: str = "") -> None:
        self.console.print(Text(bold, style="bold") + Text(rest))

    def note(self, text: str) -> None:
        self.err.print(text, markup=False, highlight=False)

    def table(self, title: str, columns: list[str], rows: list[list[Any]], names: tuple[int, ...] = (0,),
              legend: str | None = None) -> None:
        """A table whose cells stay whole at the console's width (docs/cli.md, "Tables"): as it is if every
        word of every cell fits; else with the prefix that all names (the `names` columns) share up to a '/'
        dropped, said once above the table; else one block per row, each name on a line of its own. A short
        title (it should fit 80 columns) with any explanation in `legend`, a line below it."""
        if self.console.quiet:
            return
        cells = [[_fmt(v) for v in row] for row in rows]
        self.console.print(Text(title, style="table.title"))
        if legend:
            self.console.print(Text(legend, style="dim"))
        if self._fits(_rich_table(columns, cells, names)):
            self.console.print(_rich_table(columns, cells, names))
            return
        prefix = _common_prefix([row[i] for row in cells for i in names])
        if prefix:
            short = [[c[len(prefix):] if i in names and c.startswith(prefix) else c for i, c in enumerate(row)]
                     for row in cells]
            if self._fits(_rich_table(columns, short, names)):
                self.console.print(Text(f"(names without their common prefix {prefix})", style="dim"))
                self.console.print(_rich_table(columns, short, names))
                return
        self._blocks(columns, cells, names)

    def _fits(self, table: Table) -> bool:
        """Every word of every cell and header appears whole on some line of the rendered table."""
        probe = Console(width=self.console.width, file=io.StringIO(), no_color=True, highlight=False,
                        legacy_windows=False)
        probe.print(table)
        shown = set(probe.file.getvalue().split())  # cells are padded: a whole word is a token of its own
        texts = [str(c.header) for c in table.columns] + [str(cell) for c in table.columns for cell in c.cells]
        return all(w in shown for text in texts for w in text.split())

    def _blocks(self, columns: list[str], cells: list[list[str]], names: tuple[int, ...]) -> None:
        """Rows as blocks: the first name on a line, other names and long texts on lines of their own
        ('header: value'), the short values aligned under one header line."""
        lines = [i for i in range(len(columns)) if i in names or max(len(r[i]) for r in cells) > _LONG] or [0]
        short = [i for i in range(len(columns)) if i not in lines]
        widths = {i: max([len(columns[i])] + [len(r[i]) for r in cells]) for i in short}
        aligned = lambda values: "  " + "  ".join(values[i].rjust(widths[i]) for i in short)
        self.console.print(Text(columns[lines[0]], style="bold"))
        if short:
            self.console.print(Text(aligned(columns), style="bold"), soft_wrap=True)
        for row in cells:
            self.console.print(Text(row[lines[0]]), soft_wrap=True)
            for i in lines[1:]:
                if row[i]:
                    self.console.print(Text(f"  {columns[i]}: {row[i]}"))
            if short:
                self.console.print(Text(aligned(row)), soft_wrap=True)

    def emit_json(self, data: dict) -> None:
        if not self.json_target:
            return
        text = json.dumps(_clean(data), indent=1)
        if self.json_to_stdout:
            sys.stdout.write(text + "\n")
        else:
            from ground.save import write_text_atomic
            write_text_atomic(Path(self.json_target), text + "\n")

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
        """A progress bar on stderr when it is a terminal and JSON does not go to stdout."""
        if self.json_to_stdout or not self.err.is_terminal:
            yield lambda done, total: None
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), _Count(), TimeElapsedColumn(),
                      console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=total or None)  # None: a pulsing bar, no "0/0"
            yield lambda done, total: bar.update(task, completed=done, total=total or None)


class _Count(MofNCompleteColumn):
    """done/total, blank while the total is not known."""

    def render(self, task):
        return Text("") if task.total is None else super().render(task)


_LONG = 24  # a column with wider cells gets lines of its own in the block layout


def _rich_table(columns: list[str], cells: list[list[str]], names: tuple[int, ...]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i in names or i == 0 else "right", no_wrap=i in names)
    for row in cells:
        table.add_row(*[Text(c) for c in row])  # Text: no markup inside values
    return table


def _common_prefix(names: list[str]) -> str:
    """The part up to a '/' that all (at least two different) names with a '/' share, leaving each non-empty;
    '' if none, or if it is only '/'."""
    names = [n for n in names if "/" in n]
    if len(set(names)) < 2:
        return ""
    common = names[0]
    for n in names[1:]:
        while not n.startswith(common):
            common = common[:-1]
    prefix = common[:common.rfind("/") + 1]
    return prefix if len(prefix) > 1 and all(len(n) > len(prefix) for n in names) else ""


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def mib(n: int) -> str:
    return f"{n / 2 ** 20:.3g} MiB"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
