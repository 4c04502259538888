from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import common
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.comparison import compare, known_metrics, leaderboard, load_grid
from zprune_cli.config import cache_dir as resolve_cache_dir
from zprune_cli.errors import ZpruneUsageError
from zprune_cli.results import ResultsStore, results_path

FORMATS = ("table", "json", "csv", "md")


@app.command("compare")
def compare_command(
    ctx: typer.Context,
    model: opt.Model = opt.DEFAULTS["model"],
    methods: Annotated[Optional[str], typer.Option("--methods", "-m", help="Comma-separated methods.")] = None,
    sparsity: Annotated[Optional[str], typer.Option("--sparsity", "-s", help="Comma-separated sparsities (unstructured).")] = None,
    patterns: Annotated[Optional[str], typer.Option("--patterns", "-p", help="Comma-separated: unstructured, 2:4, 4:8.")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval", help="Perplexity datasets, comma-separated (wikitext2, c4, ptb, a file).")] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Zero-shot tasks, comma-separated.")] = None,
    tasks_dir: Annotated[Optional[str], typer.Option("--tasks-dir", help="Folder of extra lm-eval YAML tasks.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Questions per task.")] = None,
    eval_seqlen: Annotated[Optional[int], typer.Option("--eval-seqlen", help="Perplexity window length (default min(2048, model max)).")] = None,
    max_windows: Annotated[Optional[int], typer.Option("--max-windows", help="Perplexity windows per dataset.")] = None,
    propagate: Annotated[Optional[str], typer.Option("--propagate", help="auto, dense or pruned.")] = None,
    allocation: Annotated[Optional[str], typer.Option("--allocation", help="uniform or owl.")] = None,
    grid: Annotated[Optional[str], typer.Option("--grid", help="A named grid from [grids.NAME] in zprune.toml or [tool.zprune.grids.NAME].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute cells already in the results store.")] = False,
    show: Annotated[bool, typer.Option("--show", help="Print the stored leaderboard; compute nothing.")] = False,
    metric: Annotated[Optional[str], typer.Option("--metric", help="With --show: only this metric (e.g. ppl, ppl:wikitext2, acc).")] = None,
    show_model: Annotated[Optional[str], typer.Option("--model", help="With --show: only this model (as it was named).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json, csv or md.")] = "table",
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write perplexity vs sparsity to this PNG (needs the plot extra).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Calibration text (see calibrate).")] = None,
    nsamples: Annotated[Optional[int], typer.Option("--nsamples", "-n", help="Calibration windows.")] = None,
    seqlen: Annotated[Optional[int], typer.Option("--seqlen", "-l", help="Calibration window length.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Calibration seed.")] = None,
    data_dir: opt.DataDir = None,
    revision: opt.Revision = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    cache_dir: opt.CacheDir = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    quiet: opt.Quiet = False,
    json: opt.Json = False,
) -> None:
    """Prune and evaluate a grid of methods x sparsities x patterns from ONE calibration; print a leaderboard.

    Finished cells are kept in the results store: a re-run skips them (--force recomputes), Ctrl-C keeps them.

    Examples:
      zprune compare smollm2-135m --methods magnitude,wanda,sparsegpt,ria,zpruner --sparsity 0.5,0.6,0.7 --patterns unstructured,2:4
      zprune compare smollm2-135m --grid paper --format md --plot ppl.png
      zprune compare --show --model smollm2-135m --metric ppl
    """
    c = common(ctx, cache_dir, device, dtype, quiet, json)
    fmt = "json" if c.json else fmt
    if fmt not in FORMATS:
        raise ZpruneUsageError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if show:
        store = ResultsStore(results_path(resolve_cache_dir(c.cache_dir)))
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
        return
    g = load_grid(grid) if grid else {}

    def pick(flag, key, default):
        return flag if flag is not None else g.get(key, default)

    outcome = compare(
        model,
        pick(methods, "methods", "magnitude,wanda,sparsegpt,ria,zpruner"),
        pick(sparsity, "sparsity", "0.5"),
        pick(patterns, "patterns", "unstructured"),
        eval_data=pick(eval_data, "eval", "wikitext2"), tasks=pick(tasks, "tasks", None), tasks_dir=tasks_dir,
        limit=pick(limit, "limit", None), eval_seqlen=pick(eval_seqlen, "eval_seqlen", None),
        max_windows=pick(max_windows, "max_windows", None), propagate=pick(propagate, "propagate", "auto"),
        allocation=pick(allocation, "allocation", "uniform"), force=force, data=pick(data, "data", opt.DEFAULTS["data"]),
        nsamples=pick(nsamples, "nsamples", opt.DEFAULTS["nsamples"]), seqlen=pick(seqlen, "seqlen", opt.DEFAULTS["seqlen"]),
        seed=pick(seed, "seed", opt.DEFAULTS["seed"]), data_dir=data_dir, cache_dir=c.cache_dir, device=c.device,
        dtype=c.dtype, revision=revision, trust_remote_code=trust_remote_code, progress=c.progress,
    )
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


def _columns(rows: list[dict]) -> list[str]:
    metrics = known_metrics(rows)
    return [m for m in metrics if m.startswith("ppl:")] + [m for m in metrics if m.startswith(("acc:", "acc_norm:"))] + \
        [m for m in metrics if m == "sparsity"]


def _best(rows: list[dict], column: str) -> float | None:
    values = [r["metrics"][column] for r in rows if column in r["metrics"] and r["method"] != "dense"]
    if not values or column == "sparsity":
        return None
    return min(values) if column.startswith("ppl") else max(values)


def _cell(value) -> str:
    return "" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def _render(rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        emit_json(rows)
        return
    columns = _columns(rows)
    head = ["model", "method", "pattern", "target", "propagate"]
    body = [[r["model"], r["method"], r["pattern"], _cell(r["sparsity"]), r["propagate"]] + [r["metrics"].get(c) for c in columns]
            for r in rows]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(head + columns)
        writer.writerows([row[:5] + ["" if v is None else v for v in row[5:]] for row in body])
        typer.echo(buffer.getvalue(), nl=False)
        return
    best = {c: _best(rows, c) for c in columns}
    if fmt == "md":
        lines = ["| " + " | ".join(head + columns) + " |", "|" + "---|" * (len(head) + len(columns))]
        for row in body:
            cells = row[:5] + [("**" + _cell(v) + "**") if v is not None and v == best[c] else _cell(v) for c, v in zip(columns, row[5:])]
            lines.append("| " + " | ".join(cells) + " |")
        typer.echo("\n".join(lines))
        return
    table = Table(title="leaderboard (best per column in bold)", title_justify="left")
    for name in head:
        table.add_column(name)
    for name in columns:
        table.add_column(name, justify="right")
    for row in body:
        table.add_row(*row[:5], *[(f"[bold]{_cell(v)}[/]" if v is not None and v == best[c] else _cell(v)) for c, v in zip(columns, row[5:])])
    stdout_console().print(table)
