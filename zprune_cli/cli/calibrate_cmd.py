from __future__ import annotations

import typer

from zprune_cli.calibration import calibrate
from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import common
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.cli.render import human_bytes


@app.command("calibrate")
def calibrate_command(
    ctx: typer.Context,
    model: opt.Model = opt.DEFAULTS["model"],
    data: opt.Data = opt.DEFAULTS["data"],
    nsamples: opt.NSamples = opt.DEFAULTS["nsamples"],
    seqlen: opt.Seqlen = opt.DEFAULTS["seqlen"],
    seed: opt.Seed = opt.DEFAULTS["seed"],
    gram: bool = typer.Option(False, "--gram", help="Also store Gram matrices (needed by SparseGPT and --reconstruct; large)."),
    data_dir: opt.DataDir = None,
    revision: opt.Revision = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    cache_dir: opt.CacheDir = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    quiet: opt.Quiet = False,
    json: opt.Json = False,
) -> None:
    """Run calibration text through the model once and store activation statistics.

    A second call with the same model, data, nsamples, seqlen and seed is a cache hit.

    Examples:
      zprune calibrate smollm2-135m --data self -n 16 -l 256
      zprune calibrate meta-llama/Llama-2-7b-hf --data c4 --gram
    """
    c = common(ctx, cache_dir, device, dtype, quiet, json)
    result = calibrate(
        model, data, nsamples, seqlen, seed, gram,
        cache_dir=c.cache_dir, data_dir=data_dir, device=c.device, dtype=c.dtype,
        revision=revision, trust_remote_code=trust_remote_code, progress=c.progress,
    )
    if c.json:
        emit_json(result.summary())
        return
    state = "[green]cache hit[/]" if result.hit else "[yellow]computed[/]"
    stdout_console().print(
        f"{state} statistics [bold]{result.key}[/] ({human_bytes(result.size_bytes)}, {result.seconds:.1f}s)\n  {result.path}"
    )
