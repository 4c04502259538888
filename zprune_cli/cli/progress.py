"""The library's Progress protocol drawn on stderr: bars on a terminal, plain lines in a pipe or a log."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

from zprune_cli.base import distributed
from zprune_cli.cli.output import log_info, stderr_console

# A path in a label shows its last part: `Tokenising c4 (train, /data/c4/c4-train.json)` -> `(train, c4-train.json)`
_PATH = re.compile(r"(?<![\w.-])(?:~|\.{1,2})?/(?:[^\s/,()]+/)*([^\s/,()]+)/?")


def short_label(description: str) -> str:
    """The label a bar shows: paths (absolute, ~ or ./) cut to their name; hub ids (org/name) stay whole."""
    return _PATH.sub(lambda m: m.group(1), description)


def _bars(console) -> Progress:
    """A live display that always fits the terminal: the label takes what the bar, count, times leave
    and ends in an ellipsis; rich would otherwise squeeze the bar and count away (only ETA left at 100
    columns) and keep the label."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", table_column=Column(ratio=3, no_wrap=True, overflow="ellipsis")),
        BarColumn(bar_width=None, table_column=Column(ratio=2, min_width=10)),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        expand=True,
    )


class _Task:
    def __init__(self, progress: Progress | None, task_id):
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._id, n)


class RichProgress:
    """Bars on stderr (count, elapsed, ETA). Each top-level step gets a display of its own, left on the
    screen when it ends; restarting one display for the next step re-drew every finished step, and left
    a copy of the first ("Loading ...") on the screen each time."""

    def __init__(self, quiet: bool = False, console=None):
        self.quiet = quiet or os.environ.get("ZPRUNE_NO_PROGRESS") == "1"
        self._console, self._bars, self._depth = console, None, 0

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[_Task]:
        """Bars nest: an outer bar (the grid of `compare`) stays while inner steps come and go."""
        if self.quiet:
            yield _Task(None, None)
            return
        if self._depth == 0:
            self._bars = _bars(self._console or stderr_console())
            self._bars.start()
        bars = self._bars
        self._depth += 1
        task_id = bars.add_task(escape(short_label(description)), total=total)  # paths are text, not markup
        try:
            yield _Task(bars, task_id)
            if total is None:
                bars.update(task_id, total=1, completed=1)
        finally:
            self._depth -= 1
            if self._depth > 0:
                bars.remove_task(task_id)  # inner steps vanish when done
            else:
                bars.stop()

    def log(self, message: str) -> None:
        log_info(message)


def _duration(seconds: float) -> str:
    """`42 s`, `3 min`, `3 min 30 s`, `1 h 05 min`."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _LineTask:
    def __init__(self, description: str, total: int | None, started: float):
        self.description, self.total, self.started, self.done = description, total, started, 0

    def advance(self, n: int = 1) -> None:
        self.done += n

    def count(self) -> str:
        return f" {self.done}/{self.total}" if self.total else ""


class LineProgress:
    """Progress for a pipe or a log file: one plain line per finished step, no bars redrawn. A step
    still running after `interval` seconds with nothing printed says so, at least every `interval`
    seconds (`Pruning with wanda: 12/32, 3 min so far`): a 9-minute step is not a silent one."""

    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.interval, self.clock = interval, clock
        self._open: list[_LineTask] = []
        self._lock = threading.Lock()
        self._last = clock()  # when a line was last printed
        self._stop: threading.Event | None = None

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[_LineTask]:
        step = _LineTask(description, total, self.clock())
        with self._lock:
            self._open.append(step)
            if len(self._open) == 1:
                self._last = step.started
                self._start_beating()
        try:
            yield step
        finally:
            with self._lock:
                self._open.remove(step)
                if not self._open:
                    self._stop_beating()
                elapsed = self.clock() - step.started
                self._write(len(self._open), f"{description}:{step.count()} done in {elapsed:.1f}s")

    def beat(self) -> float:
        """Print where the innermost open step is if nothing was printed for `interval` seconds; return
        the seconds until the next line is due (the heartbeat thread waits that long)."""
        with self._lock:
            now = self.clock()
            due = self._last + self.interval - now
            if not self._open or due > 0:
                return due if self._open else self.interval
            step = self._open[-1]
            self._write(len(self._open) - 1, f"{step.description}:{step.count()}{',' if step.total else ''} "
                                              f"{_duration(now - step.started)} so far")
            return self.interval

    def _write(self, depth: int, line: str) -> None:
        sys.stderr.write(f"{'  ' * depth}{line}\n")
        sys.stderr.flush()
        self._last = self.clock()

    def _start_beating(self) -> None:
        self._stop = stop = threading.Event()

        def run() -> None:
            wait = self.interval
            while not stop.wait(max(wait, 0.001)):
                wait = self.beat()

        threading.Thread(target=run, name="zprune-progress", daemon=True).start()

    def _stop_beating(self) -> None:
        if self._stop is not None:
            self._stop.set()  # the thread ends at its next wake; it prints nothing once no step is open
            self._stop = None

    def log(self, message: str) -> None:
        log_info(message)


def progress_for(quiet: bool):
    """Bars on a terminal, one line per step in a pipe or a log, nothing with --quiet."""
    if quiet or os.environ.get("ZPRUNE_NO_PROGRESS") == "1" or not distributed.is_main():
        return RichProgress(quiet=True)
    return RichProgress() if sys.stderr.isatty() else LineProgress()
