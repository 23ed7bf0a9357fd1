"""The ann2snn command-line app: one module per command, errors mapped to exit codes in one place.

Exit codes: 0 ok; 1 a gate failed; 2 bad input (missing or invalid file, data that does not match the
model, calibration of another model, nodes that cannot be converted); 3 internal error."""
from __future__ import annotations

import sys
from typing import Annotated

import typer

from ann2snn_cli import state

app = typer.Typer(
    name="ann2snn", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Convert an ONNX ANN into a spiking neural network and simulate it.\n\n"
         "inspect -> calibrate -> convert -> simulate; `ann2snn demo` runs all four on the bundled example.")


@app.callback()
def _global(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False) -> None:
    state.debug = debug


def _register() -> None:
    from ann2snn_cli.commands import calibrate, convert, demo, export_nir, inspect, simulate
    for module in (inspect, calibrate, convert, simulate, export_nir, demo):
        app.command(module.NAME, help=module.__doc__)(module.command)


_register()


def main(argv: list[str] | None = None) -> None:
    """`--debug` is a global option; it is taken anywhere on the line (`ann2snn convert M --debug`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args[1:]:
        args.remove("--debug")
        args.insert(0, "--debug")
    app(args)
