"""One output sink: data to stdout (JSON or rich tables), logs, warnings and progress to stderr."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from zprune_cli import distributed


# Data on a pipe or in a file gets whole lines: rich wraps and cuts at the terminal's width, or at 80
# columns when there is no terminal, which breaks `| tee`, CI logs and `| cut`.
_UNWRAPPED = 100_000


def _console(stream) -> Console:
    terminal = hasattr(stream, "isatty") and stream.isatty()
    return Console(file=stream, soft_wrap=not terminal, width=None if terminal else _UNWRAPPED)


def stdout_console() -> Console:
    return _console(sys.stdout if distributed.is_main() else io.StringIO())  # torchrun: rank 0 reports


def text_console() -> Console:
    """A console that renders into a string (console.file.getvalue()), as on a pipe: whole lines, no styles."""
    return _console(io.StringIO())


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


def emit_text(text: str) -> None:
    if not distributed.is_main():  # torchrun: one report, from rank 0
        return
    sys.stdout.write(text)
    sys.stdout.flush()


def emit_json(data: Any) -> None:
    emit_text(json_text(data))


def stderr_console() -> Console:
    return Console(file=sys.stderr, soft_wrap=True)  # progress bars size themselves to it


def error(message: str) -> None:
    """One red line; the message is user text (paths, regexes), never parsed as markup."""
    stderr_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)


def setup_logging(quiet: bool) -> None:
    """Logs to stderr: rich on a terminal; plain 'warning: ...' lines, never wrapped, in a pipe or a log."""
    logger = logging.getLogger("zprune")
    logger.handlers.clear()
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=stderr_console(), show_time=False, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    logger.addHandler(handler)
    # torchrun: the other ranks say only what went wrong, not what rank 0 says already
    logger.setLevel((logging.WARNING if quiet else logging.INFO) if distributed.is_main() else logging.ERROR)
    logger.propagate = False


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


class _Task:
    def __init__(self, progress: Progress | None, task_id):
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._id, n)


@dataclass
class RichProgress:
    """The library's Progress protocol drawn as rich bars on stderr (count, elapsed, ETA)."""

    quiet: bool = False

    def __post_init__(self):
        self._progress: Progress | None = None
        if not self.quiet:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=stderr_console(),
                transient=False,
                disable=os.environ.get("ZPRUNE_NO_PROGRESS") == "1",
            )

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[_Task]:
        """Bars nest: an outer bar (the grid of `compare`) stays while inner steps come and go."""
        if self._progress is None:
            yield _Task(None, None)
            return
        self._depth = getattr(self, "_depth", 0) + 1
        if self._depth == 1:
            self._progress.start()
        task_id = self._progress.add_task(escape(description), total=total)  # paths are text, not markup
        try:
            yield _Task(self._progress, task_id)
            if total is None:
                self._progress.update(task_id, total=1, completed=1)
        finally:
            self._depth -= 1
            if self._depth > 0:
                self._progress.remove_task(task_id)  # inner steps vanish when done
            else:
                self._progress.stop()

    def log(self, message: str) -> None:
        logging.getLogger("zprune").info(message)


class _LineTask:
    def __init__(self) -> None:
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n


@dataclass
class LineProgress:
    """Progress for a pipe or a log file: one plain line per finished step, no bars redrawn."""

    def __post_init__(self) -> None:
        self._depth = 0

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[_LineTask]:
        import time

        started, step = time.perf_counter(), _LineTask()
        self._depth += 1
        try:
            yield step
        finally:
            self._depth -= 1
        count = f" {step.done}/{total}" if total else ""
        sys.stderr.write(f"{'  ' * self._depth}{description}:{count} done in {time.perf_counter() - started:.1f}s\n")
        sys.stderr.flush()

    def log(self, message: str) -> None:
        logging.getLogger("zprune").info(message)


def progress_for(quiet: bool):
    """Bars on a terminal, one line per step in a pipe or a log, nothing with --quiet."""
    if quiet or os.environ.get("ZPRUNE_NO_PROGRESS") == "1" or not distributed.is_main():
        return RichProgress(quiet=True)
    return RichProgress() if sys.stderr.isatty() else LineProgress()
