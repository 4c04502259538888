"""One output sink: data to stdout (JSON or rich tables), logs, warnings and progress to stderr."""

from __future__ import annotations

import io
import json
import logging
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from zprune_cli.base import distributed


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


_STDERR: dict[int, Console] = {}


def stderr_console() -> Console:
    """The one console on stderr, for bars, logs and errors alike: rich prints a line above a live bar
    only when it goes through the bar's own console; a second console writing beneath the bar left
    copies of it on the screen. One per underlying stream (tests swap sys.stderr; a live display wraps
    it in a proxy that names the stream it wraps)."""
    stream = getattr(sys.stderr, "rich_proxied_file", sys.stderr)
    if id(stream) not in _STDERR or _STDERR[id(stream)].file is not stream:
        _STDERR.clear()
        _STDERR[id(stream)] = Console(file=stream)  # wraps at the width (bars must fit it); errors say soft_wrap
    return _STDERR[id(stream)]


def error(message: str) -> None:
    """One red line, never wrapped; the message is user text (paths, regexes), never parsed as markup."""
    stderr_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


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


def log_info(message: str) -> None:
    logging.getLogger("zprune").info(message)
