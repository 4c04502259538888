from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import common
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.cli.render import human_bytes
from zprune_cli.exports import ExportSummary, export


class ExportFormat(str, Enum):
    hf = "hf"
    sparse = "sparse"
    sparse_24_bitmask = "sparse-24-bitmask"
    compressed_tensors = "compressed-tensors"
    masks = "masks"


Source = Annotated[Path, typer.Argument(help="A zprune output folder (zprune prune --out DIR), or an export of one.")]
To = Annotated[Path, typer.Option("--to", help="Destination folder (written next to it, then renamed into place).")]
Format = Annotated[ExportFormat, typer.Option(
    "--format", "-f",
    help="hf: dense safetensors for transformers; sparse: non-zero values + bitmask; "
    "sparse-24-bitmask: legacy compressed-tensors 2:4; masks: prune masks only.",
)]
MaxShardSize = Annotated[str, typer.Option("--max-shard-size", help="Largest safetensors shard, e.g. 500MB, 5GB, 2GiB.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the destination folder if it exists.")]


@app.command("export")
def export_command(
    ctx: typer.Context,
    src: Source,
    to: To,
    format: Format = ExportFormat.hf,
    max_shard_size: MaxShardSize = "5GB",
    overwrite: Overwrite = False,
    dtype: Annotated[str, typer.Option("--dtype", help="Store floating-point tensors as float32, bfloat16 or float16 (auto: as in SRC).")] = "auto",
    quiet: opt.Quiet = False,
    json: opt.Json = False,
) -> None:
    """Write a pruned model as Hugging Face safetensors, a compressed sparse layout, or masks only.

    Every format carries the pruning provenance (zprune.json, safetensors metadata, a model card).
    Load any of them back with zprune_cli.load_pretrained; hf also loads with plain transformers.

    \b
    Examples:
      zprune export runs/wanda50 --to exports/wanda50-hf
      zprune export runs/wanda50 --to exports/w50-sparse -f sparse --max-shard-size 2GB
      zprune export runs/wanda-2of4 --to exports/w24 --format sparse-24-bitmask
      zprune export runs/wanda50 --to exports/wanda50-masks --format masks
      zprune export runs/s24w4 --to exports/s24w4-ct --format compressed-tensors   # pruned with --wbits
    """
    c = common(ctx, quiet=quiet, json=json)
    result = export(src, to, format.value, max_shard_size=max_shard_size, overwrite=overwrite, dtype=dtype,
                    progress=c.progress)
    if c.json:
        emit_json(result.as_dict())
        return
    console = stdout_console()
    console.print(_size_table(result) if result.format in COMPRESSED else _size_line(result))
    disk = human_bytes(result.disk_bytes)
    console.print(f"wrote [bold]{escape(result.destination)}[/] ({disk} on disk, {result.seconds:.1f}s)")


# The formats whose point is their size: dense vs stored vs the values + 1 bit ideal. hf is dense by
# design, masks hold no weights: for those the comparison says nothing, one line says what was written.
COMPRESSED = ("sparse", "sparse-24-bitmask")


def _size_line(result: ExportSummary) -> str:
    what = f"{result.format} export: {len(result.files)} file(s), {result.pruned_layers} pruned layers"
    if result.format == "masks":
        return f"{what}, {human_bytes(result.pruned_stored_bytes)} of masks (1 bit per weight)"
    if result.format == "compressed-tensors":  # the point: the decoder blocks against bfloat16
        bf16, stored = result.blocks_bf16_bytes, result.blocks_stored_bytes
        return f"{what}, decoder blocks {human_bytes(stored)} = {stored / max(bf16, 1):.3f}x their bfloat16 size"
    return f"{what}, {human_bytes(result.stored_bytes)} of tensors (dense, as transformers loads them)"


def _size_table(result: ExportSummary) -> Table:
    title = f"{result.format} export: {len(result.files)} weight file(s), {result.pruned_layers} pruned layers"
    table = Table(title=title)
    table.add_column("size")
    table.add_column("all tensors", justify="right")
    table.add_column("pruned weights", justify="right")
    dense, pruned_dense = result.dense_bytes, result.pruned_dense_bytes
    rows = (("dense", "dense_bytes"), ("stored", "stored_bytes"), ("theoretical (values + 1 bit)", "theoretical_bytes"))
    for label, key in rows:
        table.add_row(label, _size(getattr(result, key), dense), _size(getattr(result, f"pruned_{key}"), pruned_dense))
    return table


def _size(n: int, dense: int) -> str:
    return f"{human_bytes(n)} ({100 * n / dense:.0f}%)" if dense else human_bytes(n)
