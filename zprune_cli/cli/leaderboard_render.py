"""The leaderboard rendered: a rich table per protocol group, csv, markdown, one html page, json, and the
perplexity plot; `Output` says where it goes (--format, --out, --plot)."""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zprune_cli.cli.output import emit_text, json_text, stdout_console, text_console
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.records.leaderboard_cells import (HEAD, LeaderboardRow, cell_text, interval_columns, known_metrics, metric_columns,
                                         protocol_groups, row_cells)
from zprune_cli.base.staging import write_file_atomically

FORMATS = ("table", "json", "csv", "md", "html")
log = logging.getLogger("zprune")


@dataclass(frozen=True)
class Output:
    """Where the leaderboard goes: --format, --out (stdout when None) and --plot."""

    fmt: str
    out: Optional[Path] = None
    plot: Optional[Path] = None

    @classmethod
    def checked(cls, fmt: Optional[str], json: bool, out: Optional[Path], plot: Optional[Path]) -> Output:
        """Refuse a bad --format or --out now, before a grid runs for hours (the write can still fail later:
        a full disk). --json is --format json, so any other --format with it is a contradiction."""
        if json and fmt not in (None, "json"):
            raise ZpruneUsageError(f"--json means --format json and contradicts --format {fmt}; give one of the two")
        fmt = "json" if json else fmt or "table"
        if fmt not in FORMATS:
            raise ZpruneUsageError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
        if out is not None and out.is_dir():
            raise ZpruneUsageError(f"--out {out} is a folder; give a file name")
        if out is not None and not out.parent.is_dir():
            raise ZpruneUsageError(f"--out {out}: the folder {out.parent} does not exist")
        if out is not None and not os.access(out.parent, os.W_OK):
            raise ZpruneUsageError(f"--out {out}: the folder {out.parent} is not writable")
        return cls(fmt, out, plot)

    def deliver(self, rows: list[LeaderboardRow], json_data: Any, summary: str = "") -> None:
        """The leaderboard to stdout or --out (`json_data` for json, `summary` under a table), then the plot."""
        if self.fmt == "table" and self.out is None:
            _print_tables(rows, stdout_console(), summary)  # straight to the console: bold on a terminal
        elif self.out is None:
            emit_text(_text(rows, self.fmt, json_data, summary))
        else:
            write_file_atomically(self.out, _text(rows, self.fmt, json_data, summary).encode("utf-8"))
            log.info("wrote the leaderboard (%s) to %s", self.fmt, self.out)
        if self.plot:
            _plot(rows, self.plot)


def _text(rows: list[LeaderboardRow], fmt: str, json_data: Any, summary: str) -> str:
    """The leaderboard in `fmt` as text; a table as on a pipe (best marked *)."""
    if fmt == "json":
        return json_text(json_data)
    if fmt == "csv":
        return _csv(rows)
    if fmt == "md":
        return "".join(_md(group) for group in protocol_groups(rows))
    if fmt == "html":
        return _html(rows)
    console = text_console()
    _print_tables(rows, console, summary)
    return console.file.getvalue()


def _ppl_metrics(rows: list[LeaderboardRow]) -> list[str]:
    return [m for m in known_metrics(rows) if m.startswith("ppl:")]


def _plot(rows, path):
    from zprune_cli.rendering.plot import plot_leaderboard

    metrics = _ppl_metrics(rows)
    if not metrics:
        raise ZpruneUsageError("--plot needs perplexity results (--eval)")
    plot_leaderboard(rows, metrics[0], path)


def _html(rows: list[LeaderboardRow]) -> str:
    from zprune_cli.records.provenance import current_versions
    from zprune_cli.rendering.report_html import leaderboard_html

    return leaderboard_html(rows, plots={group[0]["group"]: _group_plot(group) for group in protocol_groups(rows)},
                            versions=current_versions())


def _group_plot(rows: list[LeaderboardRow]) -> bytes | str:
    """One group's perplexity plot as PNG bytes, or the line the page shows instead (a plot never mixes
    groups: their protocols differ)."""
    from zprune_cli.rendering.plot import plot_image

    metrics = _ppl_metrics(rows)
    if not metrics:
        return "No plot: this group has no perplexity results."
    try:
        return plot_image(rows, metrics[0])
    except ZpruneError as exc:  # matplotlib missing, or no pruned cell to draw
        return f"No plot: {exc}."


def _csv(rows: list[LeaderboardRow]) -> str:
    columns = metric_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    bounded = interval_columns(rows, columns)  # their 95% intervals as numbers: low and high columns
    writer.writerow(["group", "protocol", *HEAD, *columns, *[f"{c} {end}" for c in bounded for end in ("low", "high")],
                     "tied", "best"])
    for row, (text, values) in zip(rows, row_cells(rows, columns, intervals=False)):
        ends = [cell_text((row.get("intervals") or {}).get(c, [None, None])[i]) for c in bounded for i in (0, 1)]
        writer.writerow([row["group"], row["protocol"], *text, *[v for v, _ in values], *ends, " ".join(row.get("tied", [])),
                         " ".join(row.get("best", []))])
    return buffer.getvalue()


def _md(rows: list[LeaderboardRow]) -> str:
    """One protocol group as a markdown table, the best per sparsity and pattern in bold; a blank line after."""
    columns = metric_columns(rows)
    lines = [f"**{rows[0]['protocol']}** (best per sparsity and pattern in bold)", "",
             "| " + " | ".join(HEAD + columns) + " |", "|" + "---|" * (len(HEAD) + len(columns))]
    for text, values in row_cells(rows, columns):
        cells = text + [f"**{v}**" if best else v for v, best in values]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n\n"


def _print_tables(rows: list[LeaderboardRow], console: Console, summary: str = "") -> None:
    """One table per protocol group (never ranked across groups); the best per sparsity and pattern is bold
    on a terminal, starred (*) elsewhere."""
    for group in protocol_groups(rows):
        _print_table(group, console)
    if summary:
        console.print(summary)


def _print_table(rows: list[LeaderboardRow], console: Console) -> None:
    columns = metric_columns(rows)
    terminal = console.is_terminal
    mark = "best per sparsity and pattern in bold" if terminal else "best per sparsity and pattern marked *"
    table = Table(title=escape(f"{rows[0]['protocol']} ({mark})"), title_justify="left")
    for name in HEAD:
        table.add_column(name)
    for name in columns:
        table.add_column(name, justify="right")
    for text, values in row_cells(rows, columns):
        shown = [(f"[bold]{v}[/]" if terminal else f"{v}*") if best else v for v, best in values]
        table.add_row(*[escape(t) for t in text], *shown)
    console.print(table)
