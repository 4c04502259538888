from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zprune_cli.cli import dry_run as dry
from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import aliased, common, model_handle
from zprune_cli.cli.output import emit_text, json_text, stdout_console, text_console
from zprune_cli.cli.prune_cmd import recipe_fields
from zprune_cli.comparison import compare, grid_recipes, leaderboard
from zprune_cli.errors import ZpruneError, ZpruneUsageError
from zprune_cli.leaderboard_cells import HEAD, cell_text, interval_columns, known_metrics, metric_columns, protocol_groups, row_cells
from zprune_cli.methods import method_names
from zprune_cli.evaluation.run import Evaluation
from zprune_cli.results import ResultsStore, results_path
from zprune_cli.staging import write_file_atomically

FORMATS = ("table", "json", "csv", "md", "html")
log = logging.getLogger("zprune")


@app.command("compare", cls=aliased(methods="method", patterns="pattern"))
def compare_command(
    ctx: typer.Context,
    model: opt.Model = opt.DEFAULTS["model"],
    methods: Annotated[Optional[str], typer.Option("--method", "-m", help="Comma-separated methods (default: every method).")] = None,
    sparsity: Annotated[Optional[str], typer.Option("--sparsity", "-s", help="Comma-separated sparsities (unstructured).")] = None,
    patterns: Annotated[Optional[str], typer.Option("--pattern", "-p", help="Comma-separated: unstructured, 2:4, 4:8 (default unstructured).")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval", help="Perplexity datasets, comma-separated (wikitext2, c4, ptb, wikitext2-sample (shipped with zprune, no network), a file; none with --tasks).")] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Zero-shot tasks, comma-separated.")] = None,
    tasks_dir: Annotated[Optional[str], typer.Option("--tasks-dir", help="Folder of extra lm-eval YAML tasks.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Questions per task.")] = None,
    eval_seqlen: Annotated[Optional[int], typer.Option("--eval-seqlen", help="Perplexity window length (default min(2048, model max)).")] = None,
    max_windows: Annotated[Optional[int], typer.Option("--max-windows", help="Perplexity windows per dataset.")] = None,
    scope: opt.Scope = None,
    allocation: opt.Allocation = None,
    owl_m: opt.OwlM = None,
    owl_lambda: opt.OwlLambda = None,
    reconstruct: opt.ReconstructAxis = None,
    refine: opt.RefineAxis = None,
    propagate: opt.Propagate = None, permute: opt.PermuteAxis = None,
    ignore: opt.Ignore = None,
    option: opt.MethodOption = None,
    wbits: opt.WBitsAxis = None, group_size: opt.GroupSize = None, sym: opt.Sym = None, act_order: opt.ActOrder = None,
    grid: Annotated[Optional[str], typer.Option("--grid", help="A named grid from grids.NAME in zprune.toml (or tool.zprune.grids.NAME in pyproject.toml).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute cells already in the results store.")] = False,
    show: Annotated[bool, typer.Option("--show", help="Print the stored leaderboard; compute nothing.")] = False,
    metric: Annotated[Optional[str], typer.Option("--metric", help="With --show: only this metric (e.g. ppl, ppl:wikitext2, acc).")] = None,
    show_model: Annotated[Optional[str], typer.Option("--model", help="With --show: only this model (as it was named).")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="table (default), json (what --json means), csv, md or html (one self-contained page with the plot; like the others it goes to stdout unless --out).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the leaderboard (any --format, with or without --show) to this file instead of stdout, whole or not at all.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write perplexity vs sparsity to this PNG (needs the plot extra).")] = None,
    data: opt.Data = None, nsamples: opt.NSamples = None, seqlen: opt.Seqlen = None, seed: opt.Seed = None,
    data_dir: opt.DataDir = None,
    revision: opt.Revision = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    cache_dir: opt.CacheDir = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    offload: opt.Offload = "none",
    quiet: opt.Quiet = False,
    json: Annotated[bool, typer.Option("--json", help="The same as --format json (also given before the command).")] = False,
    dry_run: opt.DryRun = False,
) -> None:
    """Prune and evaluate a grid of recipes (methods x sparsities x patterns x refine x reconstruct, the other
    options shared) from ONE calibration; print a leaderboard. A re-run skips finished cells (--force redoes).

    \b
    Examples:
      zprune compare smollm2-135m --method magnitude,wanda,sparsegpt,ria,zpruner --sparsity 0.5,0.6,0.7 --pattern unstructured,2:4
      zprune compare smollm2-135m --method wanda,zpruner,alps --refine none,swaps --reconstruct none,pcg
      zprune compare smollm2-135m --method sparsegpt,wanda --sparsity 0,0.5 --wbits 16,8,4 --group-size 64
      zprune compare --show --format html --out report.html     # one page: tables, plots, versions
      zprune compare ./llama-70b --method wanda,sparsegpt --offload disk   # one decoder block in memory at a time
    """
    c = common(ctx, cache_dir, device, dtype, quiet, json or fmt == "json", data_dir=data_dir)  # one meaning
    output = Output.checked(fmt, c.json, out, plot)
    if show:
        return _show(c, show_model, metric, output)
    request = grid_request(c, grid_values(c, locals(), grid), ignore, option, tasks_dir)
    _run_grid(c, model_handle(model, c, revision, trust_remote_code, offload, dry_run), request, force, dry_run, output)


def _run_grid(c, handle, request: tuple, force: bool, dry_run: bool, output: Output) -> None:
    """--dry-run's estimate, or the grid computed (cells already stored are skipped) and its leaderboard."""
    recipes, evaluation, calibration = request
    if dry_run:
        return dry.compare(c, handle, recipes, evaluation, calibration)
    _render_outcome(compare(handle, recipes, evaluation, calibration=calibration, force=force, settings=c.settings,
                            progress=c.progress), output)


def grid_values(c, given: dict, grid: Optional[str]) -> dict:
    """The grid's keys: a named grid from the config, with the flags given (the command's locals) on top."""
    flags = {key: given[name] for key, name in GRID_FLAGS.items() if given[name] not in (None, False)}
    flags |= {key: given[key] for key in ("group_size", "sym", "act_order") if given[key] is not None}  # 0, --asym count
    return {**(c.settings.grid(grid) if grid else {}), **flags}


def grid_request(c, g: dict, ignore, option, tasks_dir):
    """(recipes, evaluation, calibration) from a grid's values (flags over a named grid)."""
    shared = recipe_fields(c, g.get("scope"), g.get("allocation"), g.get("owl_m"), g.get("owl_lambda"),
                           g.get("reconstruct"), g.get("refine"), g.get("propagate"), ignore, option)
    shared |= opt.quant_fields(None, g.get("group_size"), g.get("sym"), g.get("act_order"))
    del shared["wbits"]  # an axis: one cell per width
    recipes = grid_recipes(g.get("methods", DEFAULT_METHODS), g.get("sparsity", "0.5"), g.get("patterns", "unstructured"),
                           permute=g.get("permute", "none"), wbits=g.get("wbits", "16"), **shared)
    data = g.get("eval", "wikitext2")
    evaluation = Evaluation(data=() if data in ("none", ["none"]) else data, seqlen=g.get("eval_seqlen"), max_windows=g.get("max_windows"),
                            tasks=g.get("tasks", ()), tasks_dir=tasks_dir, limit=g.get("limit"),
                            batch_size=g.get("batch_size", 1))
    calibration = c.settings.with_flags(**{k: g.get(k) for k in ("data", "nsamples", "seqlen", "seed")}).calibration
    return recipes, evaluation, calibration


GRID_FLAGS = {"methods": "methods", "sparsity": "sparsity", "patterns": "patterns", "eval": "eval_data", "tasks": "tasks",
              "limit": "limit", "eval_seqlen": "eval_seqlen", "max_windows": "max_windows", "scope": "scope",
              "allocation": "allocation", "owl_m": "owl_m", "owl_lambda": "owl_lambda", "reconstruct": "reconstruct", "refine": "refine",
              "permute": "permute", "propagate": "propagate", "data": "data", "nsamples": "nsamples", "seqlen": "seqlen", "seed": "seed",
              "wbits": "wbits", "group_size": "group_size", "sym": "sym", "act_order": "act_order"}
DEFAULT_METHODS = ",".join(method_names())  # every registered method


def _show(c, show_model: Optional[str], metric: Optional[str], output: Output) -> None:
    store = ResultsStore(results_path(c.cache_dir))
    rows = leaderboard(store, model=show_model)
    if show_model is not None and not rows:
        raise ZpruneUsageError(f"no stored results for model '{show_model}' (see: zprune compare --show)")
    if metric is not None:
        known = known_metrics(rows)
        if not any(m == metric or m.startswith(metric + ":") for m in known):
            raise ZpruneUsageError(f"unknown metric '{metric}' (stored: {', '.join(known) or 'none'})")
        rows = leaderboard(store, model=show_model, metric=metric)
    output.deliver(rows, rows)


def _render_outcome(outcome, output: Output) -> None:
    calibration = f"one calibration ({outcome.calibration_key})" if outcome.calibration_key else "no calibration (no method reads statistics)"
    summary = f"{outcome.computed} cell(s) computed, {outcome.skipped} from the results store, {calibration}, {outcome.seconds:.1f}s"
    data = {"computed": outcome.computed, "skipped": outcome.skipped, "stats_key": outcome.calibration_key,
            "seconds": round(outcome.seconds, 3), "recipes": outcome.recipes, "rows": outcome.rows}
    output.deliver(outcome.rows, data, summary)


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

    def deliver(self, rows: list[dict], json_data: Any, summary: str = "") -> None:
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


def _text(rows: list[dict], fmt: str, json_data: Any, summary: str) -> str:
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


def _ppl_metrics(rows: list[dict]) -> list[str]:
    return [m for m in known_metrics(rows) if m.startswith("ppl:")]


def _plot(rows, path):
    from zprune_cli.plot import plot_leaderboard

    metrics = _ppl_metrics(rows)
    if not metrics:
        raise ZpruneUsageError("--plot needs perplexity results (--eval)")
    plot_leaderboard(rows, metrics[0], path)


def _html(rows: list[dict]) -> str:
    from zprune_cli.provenance import current_versions
    from zprune_cli.report_html import leaderboard_html

    return leaderboard_html(rows, plots={group[0]["group"]: _group_plot(group) for group in protocol_groups(rows)},
                            versions=current_versions())


def _group_plot(rows: list[dict]) -> bytes | str:
    """One group's perplexity plot as PNG bytes, or the line the page shows instead (a plot never mixes
    groups: their protocols differ)."""
    from zprune_cli.plot import plot_image

    metrics = _ppl_metrics(rows)
    if not metrics:
        return "No plot: this group has no perplexity results."
    try:
        return plot_image(rows, metrics[0])
    except ZpruneError as exc:  # matplotlib missing, or no pruned cell to draw
        return f"No plot: {exc}."


def _csv(rows: list[dict]) -> str:
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


def _md(rows: list[dict]) -> str:
    """One protocol group as a markdown table, the best per sparsity and pattern in bold; a blank line after."""
    columns = metric_columns(rows)
    lines = [f"**{rows[0]['protocol']}** (best per sparsity and pattern in bold)", "",
             "| " + " | ".join(HEAD + columns) + " |", "|" + "---|" * (len(HEAD) + len(columns))]
    for text, values in row_cells(rows, columns):
        cells = text + [f"**{v}**" if best else v for v, best in values]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n\n"


def _print_tables(rows: list[dict], console: Console, summary: str = "") -> None:
    """One table per protocol group (never ranked across groups); the best per sparsity and pattern is bold
    on a terminal, starred (*) elsewhere."""
    for group in protocol_groups(rows):
        _print_table(group, console)
    if summary:
        console.print(summary)


def _print_table(rows: list[dict], console: Console) -> None:
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
