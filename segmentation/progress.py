"""Progress of long work: a bar on an interactive terminal, periodic log lines otherwise.

A bar (rich, which the project already carries through typer and Prefect) appears only
once the work has taken a couple of seconds, so quick commands print nothing extra. Off a
terminal (CI, a Prefect worker, a pipe) the same progress is one plain line every few
seconds, through the `log` callable the caller gives (Prefect's run logger in a task).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Update = Callable[..., None]  # update(done, total=None, note=None)
Log = Callable[[str], None]

SHOW_AFTER_S = 2.0
LOG_EVERY_S = 10.0


def interactive() -> bool:
    """Whether a person watches this process's stderr (a bar then, not log lines)."""
    return (sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
            and not os.environ.get("CI") and not os.environ.get("PREFECT__FLOW_RUN_ID"))


def describe(label: str, done: int, total: int | None, unit: str, seconds: float) -> str:
    """One progress line: done (of total), rate, and time left when the total is known."""
    rate = done / seconds if seconds > 0 else 0.0
    text = f"{label}: {done:,}" + (f" of {total:,}" if total else "") + f" {unit}"
    text += f" ({rate:,.0f} {unit}/s" if rate >= 10 or rate == 0 else f" ({rate:.2g} {unit}/s"
    if total and rate > 0 and done < total:
        text += f", about {(total - done) / rate:,.0f} s left"
    return text + ")"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def track(label: str, total: int | None = None, unit: str = "rows", *,
          log: Log | None = None, bar: bool | None = None,
          show_after_s: float = SHOW_AFTER_S, every_s: float = LOG_EVERY_S) -> Iterator[Update]:
    """Yield update(done, total=None, note=None) for the work; the bar or the log lines
    follow it, and a bar is removed when the work ends."""
    use_bar = interactive() if bar is None else bar
    say = log or _stderr
    started = time.monotonic()
    state: dict[str, Any] = {"total": total, "logged": started, "progress": None, "task": None}

    def update(done: int, total: int | None = None, note: str | None = None) -> None:
        if total is not None:
            state["total"] = total
        now = time.monotonic()
        elapsed = now - started
        name = f"{label} ({note})" if note else label
        if use_bar:
            if state["progress"] is None and elapsed >= show_after_s:
                state["progress"], state["task"] = _start_bar(name, state["total"], unit)
            if state["progress"] is not None:
                state["progress"].update(state["task"], completed=done, total=state["total"],
                                         description=name)
        elif now - state["logged"] >= every_s:
            state["logged"] = now
            say(describe(name, done, state["total"], unit, elapsed))

    try:
        yield update
    finally:
        if state["progress"] is not None:
            state["progress"].stop()


def _start_bar(label: str, total: int | None, unit: str) -> tuple[Any, Any]:
    """A rich progress bar on stderr: done/total, rate, time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        """Units per second, once rich has measured it."""

        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} {unit}/s" if task.speed else "")

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn(unit), Rate(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    progress.start()
    return progress, progress.add_task(label, total=total)
