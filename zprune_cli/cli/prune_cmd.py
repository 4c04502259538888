from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from zprune_cli.cli import dry_run as dry
from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import Common, aliased, common, model_handle
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.records.leaderboard_cells import sparsity_text
from zprune_cli.methods import method_names
from zprune_cli.verbs.pruning import default_output, prune, prune_with_masks
from zprune_cli.engine.recipe import PruneRecipe, parse_method_list


def parse_options(values: list[str]) -> dict:
    options = {}
    for item in values:
        if "=" not in item:
            raise ZpruneUsageError(f"--option takes KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    return options


def recipe_fields(c: Common, scope, allocation, owl_m, owl_lambda, reconstruct, refine, propagate, ignore, option) -> dict:
    """The recipe fields shared by every method of a command, with the config's [sparsity] overrides."""
    return {"scope": scope, "allocation": allocation or "uniform", "owl_m": owl_m, "owl_lambda": owl_lambda,
            "reconstruct": reconstruct or "none", "refine": refine or "none", "propagate": propagate or "auto",
            "ignore": tuple(ignore or ()),
            "overrides": c.settings.sparsity_overrides, "method_options": parse_options(option or [])}


@app.command("prune", cls=aliased())
def prune_command(
    ctx: typer.Context,
    model: opt.Model = opt.DEFAULTS["model"],
    method: Annotated[str, typer.Option("--method", "-m", help=f"One or several (comma-separated): {', '.join(method_names())}.")] = "zpruner",
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", "-s", help="Fraction of weights to remove, in (0, 1) (default 0.5; N:M fixes n/m; 0 with --wbits: quantization alone).")] = None,
    pattern: Annotated[str, typer.Option("--pattern", "-p", help="unstructured, or N:M (prune N of every M inputs: 2:4, 4:8).")] = "unstructured",
    scope: opt.Scope = None,
    allocation: opt.Allocation = None,
    owl_m: opt.OwlM = None, owl_lambda: opt.OwlLambda = None,
    reconstruct: opt.Reconstruct = None,
    refine: opt.Refine = None,
    propagate: opt.Propagate = None, permute: opt.Permute = None, permute_layout: opt.PermuteLayout = None,
    ignore: opt.Ignore = None,
    option: opt.MethodOption = None,
    wbits: opt.WBits = None, group_size: opt.GroupSize = None, sym: opt.Sym = None, act_order: opt.ActOrder = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Save the pruned model here (several methods: one subfolder each). Default: ./MODEL-METHOD-SPARSITY, e.g. ./smollm2-135m-zpruner-50.")] = None,
    no_save: Annotated[bool, typer.Option("--no-save", help="Prune and report, but save nothing.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    out_dtype: Annotated[str, typer.Option("--out-dtype", help="Precision of the saved weights: float32, bfloat16, float16; auto = the model's own (bfloat16 for GGUF).")] = "auto",
    masks: Annotated[Optional[Path], typer.Option("--masks", help="Apply masks from `zprune export --format masks` instead of pruning.")] = None,
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
    offload: opt.Offload = "none",
    quiet: opt.Quiet = False,
    json: opt.Json = False,
    dry_run: opt.DryRun = False,
) -> None:
    """Prune a model from cached activation statistics (calibrating first when they are missing) and
    save it where plain transformers loads it (--out, default ./MODEL-METHOD-SPARSITY; --no-save to skip).

    \b
    Examples:
      zprune prune smollm2-135m --method zpruner --sparsity 0.5 --data self -n 16 -l 256 --out pruned
      zprune prune meta-llama/Llama-2-7b-hf --method sparsegpt --pattern 2:4 --out llama-2-4
      zprune prune smollm2-135m --method sparsegpt --pattern 2:4 --wbits 4 --group-size 64 --out s24w4
      zprune prune smollm2-135m --method wanda,ria,zpruner --allocation owl --json   # ./smollm2-135m-pruned/METHOD
    """
    c = common(ctx, cache_dir, device, dtype, quiet, json, data_dir=data_dir, data=data, nsamples=nsamples, seqlen=seqlen, seed=seed)
    handle = model_handle(model, c, revision, trust_remote_code, offload, dry_run)
    if masks is not None and dry_run:
        raise ZpruneUsageError("--dry-run estimates pruning runs; --masks applies saved masks, give one of the two")
    if masks is not None:
        return _apply_masks(c, handle, masks, out, overwrite)
    shared = recipe_fields(c, scope, allocation, owl_m, owl_lambda, reconstruct, refine, propagate, ignore, option)
    shared["permute"], shared["permute_layout"] = permute or "none", permute_layout or "native"
    shared |= opt.quant_fields(wbits, group_size, sym, act_order)
    recipes = [PruneRecipe(method=name, sparsity=sparsity, pattern=pattern, **shared) for name in parse_method_list(method)]
    if dry_run:
        return dry.prune(c, handle, recipes, _output(model, recipes, out, no_save), overwrite, out_dtype)
    outcomes = prune(handle, recipes, calibration=c.settings.calibration, out=_output(model, recipes, out, no_save),
                     overwrite=overwrite, out_dtype=out_dtype, settings=c.settings, progress=c.progress)
    _render(c, outcomes)


def _output(model: str, recipes: list[PruneRecipe], out: Optional[Path], no_save: bool) -> Optional[Path]:
    if no_save and out is not None:
        raise ZpruneUsageError("--no-save and --out contradict each other; give one")
    return None if no_save else (out or default_output(model, recipes))


def _apply_masks(c: Common, handle, masks: Path, out: Optional[Path], overwrite: bool) -> None:
    outcome = prune_with_masks(handle, masks, out=out, overwrite=overwrite, settings=c.settings, progress=c.progress)
    if c.json:
        emit_json(outcome.summary())
        return
    where = f" -> saved to {escape(str(outcome.out))}" if outcome.out else ""
    stdout_console().print(f"applied masks to {outcome.layers} layers: overall sparsity "
                           f"[bold]{sparsity_text(outcome.provenance.overall_sparsity)}[/]{where}")


def _render(c: Common, outcomes) -> None:
    if c.json:
        summaries = [o.summary() for o in outcomes]
        emit_json(summaries[0] if len(summaries) == 1 else summaries)
        return
    console = stdout_console()
    for outcome in outcomes:
        console.print(layer_table(outcome))
        where = f" -> saved to {escape(str(outcome.out))}" if outcome.out else ""
        r = outcome.report.recipe
        statistics = f"statistics {outcome.calibration.key}" if outcome.calibration else "no calibration data read"
        if outcome.report.errors:
            console.print(error_summary(outcome.report.errors))
        console.print(
            f"[bold]{escape(r.label())}[/] scope={r.scope or '-'} allocation={r.allocation} propagate={r.propagate} "
            f"recipe {r.digest}: overall sparsity [bold]{sparsity_text(outcome.report.overall)}[/] "
            f"in {outcome.report.seconds:.1f}s ({statistics}){where}"
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
    table = Table(title=f"sparsity per layer: {escape(outcome.report.recipe.label())}", title_justify="left")
    table.add_column("block")
    for name in columns:
        table.add_column(name.rsplit(".", 1)[-1], justify="right")
    for block, values in rows.items():
        table.add_row(block, *[sparsity_text(values[n]) if n in values else "-" for n in columns])
    return table


def error_summary(errors: dict[str, float], worst: int = 3) -> str:
    """One line: the mean layer error and the worst few layers (the per-layer values are in --json)."""
    ranked = sorted(errors.items(), key=lambda item: item[1], reverse=True)[:worst]
    shown = ", ".join(f"{escape(name)} {value:.3g}" for name, value in ranked)
    return (f"layer error ||WX - W'X||^2 / ||WX||^2: mean {sum(errors.values()) / len(errors):.3g} over "
            f"{len(errors)} layers; worst {shown}")


def _split(full: str) -> tuple[str, str, str]:
    """'model.layers.3.self_attn.q_proj' -> ('3', '.', 'self_attn.q_proj')."""
    parts = full.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return part, ".", ".".join(parts[i + 1 :])
    return "", ".", full
