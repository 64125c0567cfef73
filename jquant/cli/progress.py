"""A rich progress bar matching the library's ``progress(done, total, name)`` callback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def progress_callback(description: str) -> Iterator:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[item]}", style="dim"),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=None, item="")

        def update(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, item=name[-60:])

        yield update
