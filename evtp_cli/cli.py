"""The `evtp` command line: thin Typer commands over the library.

Every error a user can cause is an `EvtpError` (or a Click usage error) and ends in one red line with
exit code 2; `--debug` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from evtp_cli.errors import EvtpError

app = typer.Typer(
    name="evtp",
    help="Benchmark visual-token pruning for instruction-based visual segmentation (IVS) MLLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)


def print_whole(table: Table) -> None:
    """Print a table of numbers whole into a pipe or log (80 columns), so that no number is cut to "0.9…";
    a terminal gets rich's own fitting to its width."""
    natural = console.measure(table, options=console.options.update(max_width=10_000)).maximum
    if console.is_terminal or natural <= console.width:
        console.print(table)
    else:
        Console(file=console.file, width=natural, no_color=console.no_color).print(table)


EXIT_USER_ERROR = 2


def _exception_types(attr: str) -> tuple[type[BaseException], ...]:
    """Click's exception classes, from Typer's vendored copy and/or click itself."""
    found = []
    for module_name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, attr):
            found.append(getattr(module, attr))
    return tuple(found)


_USAGE_ERRORS = _exception_types("ClickException")
_ABORTS = _exception_types("Abort") + (typer.Abort,)
_EXITS = _exception_types("Exit") + (typer.Exit,)


@app.callback()
def _root() -> None:
    """Benchmark visual-token pruning for instruction-based visual segmentation (IVS) MLLMs.

    Add --debug anywhere to see a traceback instead of a one-line error.
    """


@app.command("list")
def list_command(
    kind: Optional[str] = typer.Argument(
        None, help="Only this kind (pruners, models or datasets), or one registered name to show its options."
    ),
) -> None:
    """List registered pruners, models and datasets with one-line descriptions; `evtp list NAME` shows the
    options NAME takes (NAME:key=value,...) with their defaults."""
    from evtp_cli.data import DATASETS
    from evtp_cli.models import MODELS
    from evtp_cli.pruners import PRUNERS

    registries = {"pruners": PRUNERS, "models": MODELS, "datasets": DATASETS}
    if kind is not None and kind not in registries:
        owners = [(name, registry) for name, registry in registries.items() if kind in registry]
        if not owners:
            raise EvtpError(f"{kind!r} is neither a kind ({', '.join(registries)}) nor a registered name; `evtp list` shows the names")
        for name, registry in owners:
            _show_options(name[:-1], registry.entry(kind))
        return
    for name, registry in registries.items():
        if kind is not None and name != kind:
            continue
        table = Table(title=name, title_justify="left", show_header=False, box=None, pad_edge=False)
        table.add_column("name", style="bold cyan", no_wrap=True)
        table.add_column("description")
        for entry in registry.entries():
            table.add_row(entry.name, entry.description)
        console.print(table)
        console.print()


def _show_options(kind: str, entry) -> None:
    from evtp_cli.spec import option_rows

    rows = option_rows(entry.load().Config)
    console.print(f"[bold]{kind} {entry.name}[/bold] — {entry.description}", highlight=False)
    if not rows:
        console.print("no options\n")
        return
    table = Table(header_style="bold", box=None, pad_edge=False)
    for column in ("option", "type", "default"):
        table.add_column(column, style="cyan" if column == "option" else None)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"as a spec: {_example_spec(entry, rows)}  (several: key=value,key=value)\n", highlight=False)


def _example_spec(entry, rows: list[tuple[str, str, str]]) -> str:
    """NAME:key=value with the required keys, plus the first option whose default (or else one of its
    choices) the config accepts: sa2va-qwen needs path= or preset=, so its empty default is no example."""
    from evtp_cli.spec import build_config

    config_cls = entry.load().Config
    required = {key: "..." for key, _, default in rows if default == "(required)"}
    for key, kind, default in rows:
        if key in required:
            continue
        choices = [c.strip() for c in kind.split("|")] if "|" in kind else []
        for value in dict.fromkeys([default.strip("'"), *choices]):
            try:
                build_config(config_cls, {**{k: "x" for k in required}, key: value}, entry.name)
            except (EvtpError, ValueError, TypeError):
                continue
            if value:
                return f"{entry.name}:" + ",".join(f"{k}={v}" for k, v in {**required, key: value}.items())
    return f"{entry.name}:" + ",".join(f"{k}={v}" for k, v in required.items()) if required else entry.name


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `evtp` script and `python -m evtp_cli`."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="evtp", standalone_mode=False)
    except _EXITS as exc:
        code = getattr(exc, "exit_code", 0)
    except _USAGE_ERRORS as exc:
        if debug:
            traceback.print_exc()
        exc.show()  # type: ignore[attr-defined]
        code = EXIT_USER_ERROR
    except _ABORTS:
        err_console.print("[red]aborted[/red]")
        code = 130
    except EvtpError as exc:
        if debug:
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        code = EXIT_USER_ERROR
    raise SystemExit(code if isinstance(code, int) else 0)


# Command modules register themselves on `app` when imported (one module per area).
from evtp_cli.commands import data as _data_commands  # noqa: E402,F401
from evtp_cli.commands import evaluate as _evaluate_commands  # noqa: E402,F401
from evtp_cli.commands import report as _report_commands  # noqa: E402,F401

for _command in app.registered_commands:  # --debug is handled by main(), so no command lists it as an option
    _command.epilog = _command.epilog or "Add --debug anywhere to see a traceback instead of a one-line error."

if __name__ == "__main__":  # pragma: no cover
    main()
