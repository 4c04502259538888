from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from zprune_cli.cli import dry_run as dry
from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import aliased, common, model_handle
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.cli.prune_cmd import recipe_fields
from zprune_cli.comparison import compare, grid_recipes, leaderboard
from zprune_cli.errors import ZpruneUsageError
from zprune_cli.leaderboard_cells import HEAD, known_metrics, metric_columns, protocol_groups, row_cells
from zprune_cli.methods import method_names
from zprune_cli.evaluation.run import Evaluation
from zprune_cli.results import ResultsStore, results_path

FORMATS = ("table", "json", "csv", "md")


@app.command("compare", cls=aliased(methods="method", patterns="pattern"))
def compare_command(
    ctx: typer.Context,
    model: opt.Model = opt.DEFAULTS["model"],
    methods: Annotated[Optional[str], typer.Option("--method", "-m", help="Comma-separated methods (default: every method).")] = None,
    sparsity: Annotated[Optional[str], typer.Option("--sparsity", "-s", help="Comma-separated sparsities (unstructured).")] = None,
    patterns: Annotated[Optional[str], typer.Option("--pattern", "-p", help="Comma-separated: unstructured, 2:4, 4:8 (default unstructured).")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval", help="Perplexity datasets, comma-separated (wikitext2, c4, ptb, a file).")] = None,
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
    propagate: opt.Propagate = None,
    ignore: opt.Ignore = None,
    option: opt.MethodOption = None,
    grid: Annotated[Optional[str], typer.Option("--grid", help="A named grid from grids.NAME in zprune.toml (or tool.zprune.grids.NAME in pyproject.toml).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute cells already in the results store.")] = False,
    show: Annotated[bool, typer.Option("--show", help="Print the stored leaderboard; compute nothing.")] = False,
    metric: Annotated[Optional[str], typer.Option("--metric", help="With --show: only this metric (e.g. ppl, ppl:wikitext2, acc).")] = None,
    show_model: Annotated[Optional[str], typer.Option("--model", help="With --show: only this model (as it was named).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json, csv or md.")] = "table",
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write perplexity vs sparsity to this PNG (needs the plot extra).")] = None,
    data: opt.Data = None,
    nsamples: opt.NSamples = None,
    seqlen: opt.Seqlen = None,
    seed: opt.Seed = None,
    data_dir: opt.DataDir = None,
    revision: opt.Revision = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    cache_dir: opt.CacheDir = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    quiet: opt.Quiet = False,
    json: opt.Json = False,
    dry_run: opt.DryRun = False,
) -> None:
    """Prune and evaluate a grid of recipes (methods x sparsities x patterns x refine x reconstruct, the other
    options shared) from ONE calibration; print a leaderboard. A re-run skips finished cells (--force redoes).

    \b
    Examples:
      zprune compare smollm2-135m --method magnitude,wanda,sparsegpt,ria,zpruner --sparsity 0.5,0.6,0.7 --pattern unstructured,2:4
      zprune compare smollm2-135m --method wanda,zpruner,alps --refine none,swaps --reconstruct none,pcg
    """
    c = common(ctx, cache_dir, device, dtype, quiet, json, data_dir=data_dir)
    fmt = _check_format("json" if c.json else fmt)
    if show:
        return _show(c, show_model, metric, fmt, plot)
    g = grid_values(c, locals(), grid)
    recipes, evaluation, calibration = grid_request(c, g, ignore, option, tasks_dir)
    if dry_run:
        return dry.compare(c, model_handle(model, c, revision, trust_remote_code), recipes, evaluation, calibration)
    _render_outcome(compare(model_handle(model, c, revision, trust_remote_code), recipes, evaluation,
                            calibration=calibration, force=force, settings=c.settings, progress=c.progress), fmt, plot)


def grid_values(c, given: dict, grid: Optional[str]) -> dict:
    """The grid's keys: a named grid from the config, with the flags given (the command's locals) on top."""
    flags = {key: given[name] for key, name in GRID_FLAGS.items() if given[name] not in (None, False)}
    return {**(c.settings.grid(grid) if grid else {}), **flags}


def grid_request(c, g: dict, ignore, option, tasks_dir):
    """(recipes, evaluation, calibration) from a grid's values (flags over a named grid)."""
    shared = recipe_fields(c, g.get("scope"), g.get("allocation"), g.get("owl_m"), g.get("owl_lambda"),
                           g.get("reconstruct"), g.get("refine"), g.get("propagate"), ignore, option)
    recipes = grid_recipes(g.get("methods", DEFAULT_METHODS), g.get("sparsity", "0.5"), g.get("patterns", "unstructured"), **shared)
    evaluation = Evaluation(data=g.get("eval", "wikitext2"), seqlen=g.get("eval_seqlen"), max_windows=g.get("max_windows"),
                            tasks=g.get("tasks", ()), tasks_dir=tasks_dir, limit=g.get("limit"))
    calibration = c.settings.with_flags(**{k: g.get(k) for k in ("data", "nsamples", "seqlen", "seed")}).calibration
    return recipes, evaluation, calibration


GRID_FLAGS = {"methods": "methods", "sparsity": "sparsity", "patterns": "patterns", "eval": "eval_data", "tasks": "tasks",
              "limit": "limit", "eval_seqlen": "eval_seqlen", "max_windows": "max_windows", "scope": "scope",
              "allocation": "allocation", "owl_m": "owl_m", "owl_lambda": "owl_lambda", "reconstruct": "reconstruct", "refine": "refine",
              "propagate": "propagate", "data": "data", "nsamples": "nsamples", "seqlen": "seqlen", "seed": "seed"}
DEFAULT_METHODS = ",".join(method_names())  # every registered method


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ZpruneUsageError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    return fmt


def _show(c, show_model: Optional[str], metric: Optional[str], fmt: str, plot: Optional[Path]) -> None:
    store = ResultsStore(results_path(c.cache_dir))
    rows = leaderboard(store, model=show_model)
    if show_model is not None and not rows:
        raise ZpruneUsageError(f"no stored results for model '{show_model}' (see: zprune compare --show)")
    if metric is not None:
        known = known_metrics(rows)
        if not any(m == metric or m.startswith(metric + ":") for m in known):
            raise ZpruneUsageError(f"unknown metric '{metric}' (stored: {', '.join(known) or 'none'})")
        rows = leaderboard(store, model=show_model, metric=metric)
    _render(rows, fmt)
    if plot:
        _plot(rows, plot)


def _render_outcome(outcome, fmt: str, plot: Optional[Path]) -> None:
    if fmt == "json":
        emit_json({"computed": outcome.computed, "skipped": outcome.skipped, "stats_key": outcome.calibration_key,
                   "seconds": round(outcome.seconds, 3), "rows": outcome.rows})
    else:
        _render(outcome.rows, fmt)
        if fmt == "table":
            stdout_console().print(f"{outcome.computed} cell(s) computed, {outcome.skipped} from the results store, "
                                   f"one calibration ({outcome.calibration_key}), {outcome.seconds:.1f}s")
    if plot:
        _plot(outcome.rows, plot)


def _plot(rows, path):
    from zprune_cli.plot import plot_leaderboard

    metrics = [m for m in known_metrics(rows) if m.startswith("ppl:")]
    if not metrics:
        raise ZpruneUsageError("--plot needs perplexity results (--eval)")
    plot_leaderboard(rows, metrics[0], path)


def _render(rows: list[dict], fmt: str) -> None:
    """One table per protocol group (never ranked across groups); the best per sparsity and pattern is
    bold on a terminal, and starred (*) in markdown, plain text and csv's `best` column."""
    if fmt == "json":
        emit_json(rows)
        return
    if fmt == "csv":
        _render_csv(rows)
        return
    for group in protocol_groups(rows):
        (_render_md if fmt == "md" else _render_table)(group)


def _render_csv(rows: list[dict]) -> None:
    columns = metric_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["group", "protocol", *HEAD, *columns, "best"])
    for row, (text, values) in zip(rows, row_cells(rows, columns)):
        writer.writerow([row["group"], row["protocol"], *text, *[v for v, _ in values], " ".join(row.get("best", []))])
    typer.echo(buffer.getvalue(), nl=False)


def _render_md(rows: list[dict]) -> None:
    columns = metric_columns(rows)
    lines = [f"**{rows[0]['protocol']}** (best per sparsity and pattern in bold)", "",
             "| " + " | ".join(HEAD + columns) + " |", "|" + "---|" * (len(HEAD) + len(columns))]
    for text, values in row_cells(rows, columns):
        cells = text + [f"**{v}**" if best else v for v, best in values]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    typer.echo("\n".join(lines) + "\n")


def _render_table(rows: list[dict]) -> None:
    columns = metric_columns(rows)
    console = stdout_console()
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
