from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import common
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.errors import ZpruneUsageError
from zprune_cli.methods import method_names
from zprune_cli.pruning import prune, prune_with_masks


def parse_options(values: list[str]) -> dict:
    options = {}
    for item in values:
        if "=" not in item:
            raise ZpruneUsageError(f"--option takes KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    return options


@app.command("prune")
def prune_command(
    ctx: typer.Context,
    model: opt.Model = opt.DEFAULTS["model"],
    method: Annotated[str, typer.Option("--method", "-m", help=f"One or several (comma-separated): {', '.join(method_names())}.")] = "zpruner",
    sparsity: Annotated[float, typer.Option("--sparsity", "-s", help="Fraction of weights to remove, in (0, 1). Ignored with N:M.")] = 0.5,
    pattern: Annotated[str, typer.Option("--pattern", "-p", help="unstructured, or N:M (prune N of every M inputs: 2:4, 4:8).")] = "unstructured",
    scope: Annotated[Optional[str], typer.Option("--scope", help="row or layer: where exact counts are enforced (default: the method's).")] = None,
    allocation: Annotated[str, typer.Option("--allocation", help="uniform or owl (outlier-weighted per block; overall sparsity stays s).")] = "uniform",
    owl_m: Annotated[float, typer.Option("--owl-m", help="OWL outlier threshold M (x mean score).")] = 5.0,
    owl_lambda: Annotated[float, typer.Option("--owl-lambda", help="OWL spread lambda.")] = 0.08,
    reconstruct: Annotated[bool, typer.Option("--reconstruct", help="SparseGPT weight update with the method's mask held fixed.")] = False,
    propagate: Annotated[str, typer.Option("--propagate", help="auto, dense (stored statistics only) or pruned (papers' protocol).")] = "auto",
    ignore: Annotated[Optional[list[str]], typer.Option("--ignore", help="Regex of layer names to leave dense (repeatable).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", help="Method option KEY=VALUE, e.g. a=0.5 for ria (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Save the pruned model here (several methods: one subfolder each).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    masks: Annotated[Optional[Path], typer.Option("--masks", help="Apply masks from `zprune export --format masks` instead of pruning.")] = None,
    data: opt.Data = opt.DEFAULTS["data"],
    nsamples: opt.NSamples = opt.DEFAULTS["nsamples"],
    seqlen: opt.Seqlen = opt.DEFAULTS["seqlen"],
    seed: opt.Seed = opt.DEFAULTS["seed"],
    data_dir: opt.DataDir = None,
    revision: opt.Revision = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    cache_dir: opt.CacheDir = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    quiet: opt.Quiet = False,
    json: opt.Json = False,
) -> None:
    """Prune a model from cached activation statistics (calibrating first when they are missing).

    Examples:
      zprune prune smollm2-135m --method zpruner --sparsity 0.5 --data self -n 16 -l 256 --out pruned
      zprune prune meta-llama/Llama-2-7b-hf --method sparsegpt --pattern 2:4 --out llama-2-4
      zprune prune smollm2-135m --method wanda,ria,zpruner --allocation owl --json
    """
    c = common(ctx, cache_dir, device, dtype, quiet, json)
    if masks is not None:
        outcome = prune_with_masks(model, masks, out=out, overwrite=overwrite, device=c.device, dtype=c.dtype,
                                   revision=revision, trust_remote_code=trust_remote_code, progress=c.progress)
        if c.json:
            emit_json(outcome.summary())
        else:
            where = f" -> saved to {outcome.out}" if outcome.out else ""
            stdout_console().print(f"applied masks to {outcome.layers} layers: overall sparsity "
                                   f"[bold]{outcome.provenance['overall_sparsity']:.4f}[/]{where}")
        return
    outcomes = prune(
        model, method, sparsity, pattern, scope=scope, allocation=allocation, owl_m=owl_m, owl_lambda=owl_lambda,
        reconstruct=reconstruct, propagate=propagate, ignore=ignore or [], method_options=parse_options(option or []),
        out=out, overwrite=overwrite, data=data, nsamples=nsamples, seqlen=seqlen, seed=seed, data_dir=data_dir,
        cache_dir=c.cache_dir, device=c.device, dtype=c.dtype, revision=revision, trust_remote_code=trust_remote_code,
        progress=c.progress,
    )
    if c.json:
        summaries = [o.summary() for o in outcomes]
        emit_json(summaries[0] if len(summaries) == 1 else summaries)
        return
    console = stdout_console()
    for outcome in outcomes:
        console.print(layer_table(outcome))
        where = f" -> saved to {outcome.out}" if outcome.out else ""
        s = outcome.report.spec
        console.print(
            f"[bold]{s['method']}[/] {s['pattern']} scope={s['scope']} allocation={s['allocation']} "
            f"propagate={s['propagate']}: overall sparsity [bold]{outcome.report.overall:.4f}[/] "
            f"in {outcome.report.seconds:.1f}s (statistics {outcome.calibration.key}){where}"
        )


def layer_table(outcome) -> Table:
    """Blocks as rows, the block's Linear layers as columns: sparsity of each."""
    rows: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    for full, value in outcome.report.layers.items():
        block, _, name = _split(full)
        rows.setdefault(block, {})[name] = value
        if name not in columns:
            columns.append(name)
    table = Table(title=f"sparsity per layer: {outcome.report.spec['method']}", title_justify="left")
    table.add_column("block")
    for name in columns:
        table.add_column(name.rsplit(".", 1)[-1], justify="right")
    for block, values in rows.items():
        table.add_row(block, *[f"{values[n]:.3f}" if n in values else "-" for n in columns])
    return table


def _split(full: str) -> tuple[str, str, str]:
    """'model.layers.3.self_attn.q_proj' -> ('3', '.', 'self_attn.q_proj')."""
    parts = full.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return part, ".", ".".join(parts[i + 1 :])
    return "", ".", full
