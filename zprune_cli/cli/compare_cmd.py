from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from zprune_cli.cli import dry_run as dry
from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import aliased, common, model_handle
from zprune_cli.cli.leaderboard_render import FORMATS, Output  # noqa: F401  (FORMATS: still importable from here)
from zprune_cli.cli.prune_cmd import parse_options
from zprune_cli.verbs.comparison import compare, leaderboard
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.verbs.grid import FLAGS, GRID_KEYS, Grid
from zprune_cli.records.leaderboard_cells import known_metrics
from zprune_cli.records.results import ResultsStore, results_path


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
    propagate: opt.Propagate = None, permute: opt.PermuteAxis = None, permute_layout: opt.PermuteLayout = None,
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
    the_grid = grid_of(c, ctx.params, grid, ignore, option, tasks_dir)
    _run_grid(c, model_handle(model, c, revision, trust_remote_code, offload, dry_run), the_grid, force, dry_run, output)


def grid_of(c, params: dict, grid: Optional[str], ignore, option, tasks_dir) -> Grid:
    """The Grid of a named grid (--grid) with the flags given on top (`params`: the command's parsed flags)."""
    layers = [(f"{c.settings.config_file or 'the config'}: grids.{grid}", c.settings.grid(grid))] if grid else []
    flags = {key: params.get(FLAG_PARAMS.get(key, key)) for key in GRID_KEYS}  # batch_size: TOML only
    return Grid.parse([*layers, (FLAGS, flags)], c.settings, ignore=ignore or (), method_options=parse_options(option or []),
                      tasks_dir=tasks_dir)


def _run_grid(c, handle, grid: Grid, force: bool, dry_run: bool, output: Output) -> None:
    """--dry-run's estimate, or the grid computed (cells already stored are skipped) and its leaderboard."""
    if dry_run:
        return dry.compare(c, handle, grid.recipes(), grid.evaluation, grid.calibration)
    _render_outcome(compare(handle, grid=grid, force=force, settings=c.settings, progress=c.progress), output)


FLAG_PARAMS = {"eval": "eval_data"}  # grid key -> this command's parameter, where the two differ


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
