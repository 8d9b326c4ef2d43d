"""A rich progress bar that appears with the first task, so that errors raised before any work (a typo, a
refused output folder) print only their one line."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from evtp_cli.cli import console


@contextlib.contextmanager
def progress_bar() -> Iterator[tuple[Callable[[str, int], None], Callable[[], None]]]:
    """Yields (start(label, total), advance()); each start() begins a new bar and completes the previous one."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    progress = Progress(*columns, console=console, transient=False)
    state: dict = {"task": None, "started": False}

    def start(label: str, total: int) -> None:
        if not state["started"]:
            progress.start()
            state["started"] = True
        if state["task"] is not None:
            progress.update(state["task"], completed=progress.tasks[-1].total)
        state["task"] = progress.add_task(label, total=total)

    def advance() -> None:
        if state["task"] is not None:
            progress.advance(state["task"])

    try:
        yield start, advance
    finally:
        if state["started"]:
            progress.stop()
