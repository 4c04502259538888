"""Export a zprune output folder (`zprune prune --out DIR`) to a format, and load any of them back.

Formats (the layouts are documented in each module):
  hf                 dense safetensors shards + index, config, tokenizer, model card (export.hf)
  sparse             pruned weights as non-zero values + packed bitmask, the rest dense (export.sparse)
  sparse-24-bitmask  the legacy compressed-tensors 2:4 layout (export.sparse24)
  compressed-tensors packed integer weights of a folder pruned with --wbits (formats.compressed_tensors)
  masks              bit-packed prune masks only, to re-apply to the base model (export.masks)

Every export is written into a temporary folder next to the destination and renamed into place at the
end, so an error or Ctrl-C leaves nothing half-written.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, TypeAlias

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.lazy import lazy
from zprune_cli.formats import compressed_tensors, hf, masks, sparse, sparse24
from zprune_cli.formats.grids import GRIDS_FILE, read_grids
from zprune_cli.formats.bits import tensor_bytes
from zprune_cli.exports.summary import ExportSummary
from zprune_cli.exports.io import (
    ShardWriter,
    Sizes,
    block_prefixes,
    check_destination,
    copy_side_files,
    folder_bytes,
    parse_size,
    write_hf_index,
    write_json,
)
from zprune_cli.formats.masks import apply_masks
from zprune_cli.formats.reader import SPARSE_MANIFEST, WeightReader, read_config
from zprune_cli.rendering.model_card import model_card
from zprune_cli.models.checkpoint_names import checkpoint_targets
from zprune_cli.models.load import parse_dtype
from zprune_cli.models.pretrained import load_pretrained, load_tokenizer
from zprune_cli.base.progress import Progress, ensure
from zprune_cli.records.provenance import Provenance
from zprune_cli.base.staging import staged_folder
from zprune_cli.engine.recipe import recipe_of

torch = lazy("torch")
experts = lazy("zprune_cli.models.experts")

__all__ = ["FORMATS", "ExportSummary", "export", "load_pretrained", "load_tokenizer", "apply_masks"]

FORMATS = ("hf", "sparse", "sparse-24-bitmask", "compressed-tensors", "masks")
log = logging.getLogger("zprune")


def export(
    src: str | Path,
    to: str | Path,
    format: str = "hf",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    dtype: str | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """Write the pruned model in `src` (a zprune output folder) to the folder `to` in `format`, its
    floating-point tensors in `dtype` (None or "auto": as stored in `src`).

    Returns a summary: destination, files, sizes in bytes (dense, stored, theoretical, on disk, and the
    same for the pruned weights alone), warnings and seconds. Raises ZpruneUsageError for a bad format,
    shard size or an existing destination without overwrite; ZpruneError for anything else.
    """
    start = time.perf_counter()
    if format not in FORMATS:
        raise ZpruneUsageError(f"unknown export format {format!r} (use {', '.join(FORMATS)})")
    source, dest = Path(src).expanduser(), Path(to).expanduser()
    provenance = Provenance.read(source)
    max_bytes = parse_size(max_shard_size)
    check_destination(source, dest, overwrite)
    reader = WeightReader(source)
    if format == "masks" and not _stored_as_held(reader, provenance):
        reader = _LoadedTensors(source)  # masks are applied to a loaded model: name its tensors, not the files'
    pruned = _pruned_weights(reader, provenance)
    cast = parse_dtype(dtype)
    provenance = provenance.with_export(format, source.resolve())
    if cast is not None:
        provenance = replace(provenance, dtype=str(cast).removeprefix("torch."))

    kept_dense: list[str] = []
    if format == "sparse-24-bitmask":
        pruned, kept_dense = _natively_nm(pruned, provenance)
    warnings = _check_format(format, reader, pruned, provenance) + kept_dense

    with staged_folder(dest, overwrite) as tmp:
        job = _Job(reader, tmp, dest.name, provenance, pruned, max_bytes, ensure(progress), cast)
        sizes, files = _WRITERS[format](job)
        disk = folder_bytes(tmp)
        weights_disk = sum((tmp / f).stat().st_size for f in files)
        if format in ("hf", "sparse") and (source / GRIDS_FILE).is_file():  # the values are kept: so are their grids
            shutil.copy2(source / GRIDS_FILE, tmp / GRIDS_FILE)

    return ExportSummary(format=format, source=str(source), destination=str(dest), files=files, pruned_layers=len(pruned),
                         overall_sparsity=provenance.overall_sparsity, **sizes.as_dict(), weights_disk_bytes=weights_disk,
                         disk_bytes=disk, **sizes.blocks_dict(), warnings=warnings, seconds=round(time.perf_counter() - start, 3))


def _check_format(format: str, reader: WeightReader, pruned: dict[str, str], provenance: Provenance) -> list[str]:
    """Refuse what the format cannot hold (naming the first bad layer); warn about what it loses."""
    warnings: list[str] = []
    recipe = recipe_of(provenance.recipe)
    if format == "sparse-24-bitmask":
        for weight_name, module in pruned.items():  # in zprune.json's (model) order: name the first bad layer
            sparse24.check_24(module, reader.get(weight_name))
        warnings.append(sparse24.LEGACY_WARNING)
    if format == "compressed-tensors":
        warnings += _compressed_tensors_checks(provenance)
    elif recipe.quant is not None and format in ("sparse", "sparse-24-bitmask"):
        warnings.append(f"{recipe.label()} is quantized; {format} stores its dequantized values in floating "
                        "point (export compressed-tensors for packed integers)")
    if format == "masks" and recipe.updates_weights:
        warnings.append(
            f"{recipe.label()} changed the surviving weights too; masks only record which weights "
            "are zero, so applying them to the base model will not give this model back (export hf or sparse "
            "to keep the weights)"
        )
    for warning in warnings:
        log.warning(warning)
    return warnings


def _natively_nm(pruned: dict[str, str], provenance: Provenance) -> tuple[dict[str, str], list[str]]:
    """The layers whose stored weights are N:M as they stand, and a warning naming the others: a layer
    pruned with --permute whose permutation no producer could absorb is N:M only after its inputs are
    permuted (zprune.json's nm_layout), so a 2:4 format stores it dense."""
    layout = provenance.nm_layout or {}
    native = {name: module for name, module in pruned.items() if layout.get(module) != "permuted"}
    dense = [module for module in pruned.values() if layout.get(module) == "permuted"]
    if not dense:
        return native, []
    warning = (f"{len(dense)} layer(s) are 2:4 only after their inputs are permuted (--permute, no producer could "
               f"absorb it) and are stored dense: {', '.join(dense[:6])}{', ...' if len(dense) > 6 else ''}")
    log.warning(warning)
    return native, [warning]


def _pruned_weights(reader: "WeightReader | _LoadedTensors", provenance: Provenance) -> dict[str, str]:
    """{stored weight name: module name} for every layer zprune.json lists as pruned. An MoE expert slice
    ('...experts.gate_up_proj.3') is stored in its fused tensor, or (as transformers saves it) in one tensor
    per expert and projection, found through transformers' conversion table."""
    out: dict[str, str] = {}
    foreign: list[str] = []
    for module in provenance.pruned_layers:
        if f"{module}.weight" in reader:
            out[f"{module}.weight"] = module
        elif module.rpartition(".")[2].isdigit() and experts.fused_tensor_name(module) in reader:
            out[experts.fused_tensor_name(module)] = experts.fused_tensor_name(module)
        else:
            foreign.append(module)
    if foreign:
        targets = checkpoint_targets(reader.folder, [n for n in reader.names if n not in out])
        wanted = {f"{m}.weight" for m in foreign} | {experts.fused_tensor_name(m) for m in foreign}
        found = {stored: target for stored, target in targets.items() if target in wanted}
        lost = [m for m in foreign if f"{m}.weight" not in found.values() and experts.fused_tensor_name(m) not in found.values()]
        if lost:
            raise ZpruneError(f"zprune.json lists pruned layer {lost[0]}, but the weights hold no {lost[0]}.weight")
        out.update({stored: stored.removesuffix(".weight") for stored in found})
    return out


def _stored_as_held(reader: WeightReader, provenance: Provenance) -> bool:
    """Whether every pruned layer's tensor is stored under the model's own name (not one tensor per expert)."""
    return all(f"{m}.weight" in reader or experts.fused_tensor_name(m) in reader for m in provenance.pruned_layers)


class _LoadedTensors:
    """The reading side of a WeightReader over the loaded model: its tensors under the names it holds them by
    (MoE experts fused), for a checkpoint transformers saved in another layout. Costs the model in memory."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._state = load_pretrained(folder).state_dict()
        self.names = list(self._state)

    def get(self, name: str) -> torch.Tensor:
        return self._state[name]

    def __contains__(self, name: str) -> bool:
        return name in self._state


# --- one writer per format ---------------------------------------------------------------------------

@dataclass
class _Job:
    reader: WeightReader
    folder: Path  # the temporary folder being filled
    name: str  # the destination's folder name (the model card's title)
    provenance: Provenance
    pruned: dict[str, str]  # weight name -> module name
    max_bytes: int
    progress: Progress
    dtype: torch.dtype | None = None  # cast floating-point tensors to this on the way through


Encoder: TypeAlias = "Callable[[str, torch.Tensor], dict[str, torch.Tensor]]"


def _write_tensors(job: _Job, writer: ShardWriter, encode_pruned: Encoder, encode_dense: Encoder | None) -> Sizes:
    """Stream every tensor of the source through the encoders into `writer`; count the sizes."""
    sizes = Sizes()
    blocks = block_prefixes(job.pruned.values())
    with job.progress.task(f"writing {job.name}", total=len(job.reader.names)) as task:
        for name in job.reader.names:
            tensor = job.reader.get(name)
            if job.dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(job.dtype)
            if name in job.pruned:
                parts = encode_pruned(name, tensor)
                sizes.add_pruned(tensor, sum(tensor_bytes(t) for t in parts.values()))
            else:
                parts = encode_dense(name, tensor) if encode_dense else {}
                sizes.add_dense(tensor, sum(tensor_bytes(t) for t in parts.values()))
            if name.startswith(blocks):
                sizes.add_block(tensor, sum(tensor_bytes(t) for t in parts.values()))
            if parts:
                writer.add(parts)
            task.advance()
    return sizes


def _model_folder_extras(job: _Job, fmt: str, config: dict) -> None:
    """config.json, tokenizer and other side files, zprune.json and the model card."""
    if job.dtype is not None:
        config = {**config, "dtype": str(job.dtype).removeprefix("torch.")}
        config.pop("torch_dtype", None)
    write_json(job.folder / "config.json", config)
    copy_side_files(job.reader.folder, job.folder)
    job.provenance.write(job.folder)
    (job.folder / "README.md").write_text(model_card(job.provenance, fmt, job.name), encoding="utf-8")


def _write_hf(job: _Job) -> tuple[Sizes, list[str]]:
    writer = ShardWriter(job.folder, hf.PREFIX, job.max_bytes, job.provenance.safetensors_metadata())
    sizes = _write_tensors(job, writer, hf.encode, hf.encode)
    weight_map = writer.close()
    write_hf_index(job.folder, weight_map, writer.total_bytes)
    _model_folder_extras(job, "hf", hf.clean_config(read_config(job.reader.folder)))
    return sizes, sorted(set(weight_map.values()))


def _write_sparse(job: _Job) -> tuple[Sizes, list[str]]:
    writer = ShardWriter(job.folder, sparse.PREFIX, job.max_bytes, job.provenance.safetensors_metadata())
    compressed: list[str] = []

    def encode(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        if sparse.stored_bytes(weight) >= tensor_bytes(weight):  # barely pruned: values + bitmask would be larger
            return hf.encode(name, weight)
        compressed.append(name)
        return sparse.compress(name, weight)

    sizes = _write_tensors(job, writer, encode, hf.encode)
    weight_map = writer.close()
    write_json(job.folder / SPARSE_MANIFEST, sparse.manifest(compressed, weight_map, sizes.as_dict()))
    _model_folder_extras(job, "sparse", hf.clean_config(read_config(job.reader.folder)))
    return sizes, sorted(set(weight_map.values()))


def _write_sparse24(job: _Job) -> tuple[Sizes, list[str]]:
    writer = ShardWriter(job.folder, hf.PREFIX, job.max_bytes, job.provenance.safetensors_metadata())
    sizes = _write_tensors(job, writer, lambda name, w: sparse24.compress(job.pruned[name], w), hf.encode)
    weight_map = writer.close()
    write_hf_index(job.folder, weight_map, writer.total_bytes)
    # Weights not pruned stay dense; lm_head is listed as llm-compressor did, even when it is tied.
    dense = {
        n.rpartition(".")[0] for n in job.reader.names
        if n.endswith(".weight") and n not in job.pruned and len(job.reader.stored_shape(n)) == 2
    }
    config = hf.clean_config(read_config(job.reader.folder))
    config["quantization_config"] = sparse24.quantization_config(
        job.provenance.overall_sparsity, sorted(dense | {"lm_head"})
    )
    _model_folder_extras(job, "sparse-24-bitmask", config)
    return sizes, sorted(set(weight_map.values()))


def _compressed_tensors_checks(provenance: Provenance) -> list[str]:
    """Refuse a folder without quantization; warn about what vLLM will not serve."""
    recipe = recipe_of(provenance.recipe)
    quant = recipe.quant
    if quant is None:
        raise ZpruneUsageError(f"compressed-tensors stores quantized weights; {recipe.label()} was not quantized "
                               "(prune with --wbits 2..8, or export sparse / sparse-24-bitmask / hf)")
    if quant.bits not in compressed_tensors.SERVED_BITS:
        return [f"{quant.bits}-bit weights: transformers loads them, vLLM's compressed-tensors kernels take "
                f"{' or '.join(map(str, compressed_tensors.SERVED_BITS))} bits only"]
    return []


def _write_compressed_tensors(job: _Job) -> tuple[Sizes, list[str]]:
    recipe = recipe_of(job.provenance.recipe)
    quant = recipe.quant
    grids = read_grids(job.reader.folder)
    stored_dtype = parse_dtype(job.provenance.dtype) or torch.float32

    def encode(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        module = job.pruned[name]
        if module not in grids:
            raise ZpruneError(f"{GRIDS_FILE} holds no grid for layer {module}")
        scale, zero = grids[module]
        q = compressed_tensors.levels(module, weight, scale, zero, quant.bits, stored_dtype)
        return compressed_tensors.encode(module, q, scale, zero, quant.bits, quant.sym, weight.dtype)

    writer = ShardWriter(job.folder, hf.PREFIX, job.max_bytes, job.provenance.safetensors_metadata())
    sizes = _write_tensors(job, writer, encode, hf.encode)
    weight_map = writer.close()
    write_hf_index(job.folder, weight_map, writer.total_bytes)
    dense = {n.rpartition(".")[0] for n in job.reader.names
             if n.endswith(".weight") and n not in job.pruned and len(job.reader.stored_shape(n)) == 2}
    config = hf.clean_config(read_config(job.reader.folder))
    config["quantization_config"] = compressed_tensors.quantization_config(
        quant.bits, quant.group_size, quant.sym, quant.act_order, sorted(dense | {"lm_head"}),
        job.provenance.overall_sparsity, "unstructured" if recipe.pattern == "unstructured" else recipe.pattern)
    _model_folder_extras(job, "compressed-tensors", config)
    return sizes, sorted(set(weight_map.values()))


def _write_masks(job: _Job) -> tuple[Sizes, list[str]]:
    # One file whatever the shard size: masks cost 1 bit per pruned weight.
    writer = ShardWriter(job.folder, "masks", 2**62, job.provenance.safetensors_metadata())
    sizes = _write_tensors(job, writer, lambda name, w: masks.encode(job.pruned[name], w), None)
    weight_map = writer.close()
    manifest = masks.manifest(job.provenance.as_dict(), list(job.pruned.values()), recipe_of(job.provenance.recipe).updates_weights)
    write_json(job.folder / masks.MANIFEST, manifest)
    return sizes, sorted(set(weight_map.values()))


_WRITERS: dict[str, Callable[[_Job], tuple[Sizes, list[str]]]] = {
    "hf": _write_hf,
    "sparse": _write_sparse,
    "sparse-24-bitmask": _write_sparse24,
    "compressed-tensors": _write_compressed_tensors,
    "masks": _write_masks,
}
