from __future__ import annotations

import typer
from rich.markup import escape

from zprune_cli.verbs.calibration import calibrate
from zprune_cli.cli import dry_run as dry
from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import common, model_handle
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.cli.render import human_bytes


@app.command("calibrate")
def calibrate_command(
    ctx: typer.Context,
    model: opt.Model = opt.DEFAULTS["model"],
    data: opt.Data = None,
    nsamples: opt.NSamples = None,
    seqlen: opt.Seqlen = None,
    seed: opt.Seed = None,
    gram: bool = typer.Option(False, "--gram", help="Also store Gram matrices (needed by SparseGPT and --reconstruct; large)."),
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
    """Run calibration text through the model once and store activation statistics.

    A second call with the same model, data, nsamples, seqlen and seed is a cache hit.

    \b
    Examples:
      zprune calibrate smollm2-135m --data self -n 16 -l 256
      zprune calibrate meta-llama/Llama-2-7b-hf --data c4 --gram
      zprune calibrate meta-llama/Llama-2-7b-hf --gram --dry-run       # memory, store size, passes
    """
    c = common(ctx, cache_dir, device, dtype, quiet, json, data_dir=data_dir, data=data, nsamples=nsamples,
               seqlen=seqlen, seed=seed)
    handle = model_handle(model, c, revision, trust_remote_code, offload, dry_run)
    if dry_run:
        return dry.calibrate(c, handle, gram)
    result = calibrate(handle, c.settings.calibration, gram=gram, settings=c.settings, progress=c.progress)
    if c.json:
        emit_json(result.summary())
        return
    state = "[green]cache hit[/]" if result.hit else "[yellow]computed[/]"
    stdout_console().print(
        f"{state} statistics [bold]{escape(result.key)}[/] ({human_bytes(result.size_bytes)}, {result.seconds:.1f}s)\n  "
        f"{escape(str(result.path))}"
    )
