"""Export a zprune output folder (`zprune prune --out DIR`) to a format, and load any of them back.

Formats (the layouts are documented in each module):
  hf                 dense safetensors shards + index, config, tokenizer, model card (export.hf)
  sparse             pruned weights as non-zero values + packed bitmask, the rest dense (export.sparse)
  sparse-24-bitmask  the legacy compressed-tensors 2:4 layout (export.sparse24)
  masks              bit-packed prune masks only, to re-apply to the base model (export.masks)

Every export is written into a temporary folder next to the destination and renamed into place at the
end, so an error or Ctrl-C leaves nothing half-written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from zprune_cli.errors import ZpruneError, ZpruneUsageError
from zprune_cli.export import hf, masks, sparse, sparse24
from zprune_cli.export.bits import tensor_bytes
from zprune_cli.export.io import (
    SPARSE_MANIFEST,
    ShardWriter,
    Sizes,
    WeightReader,
    check_destination,
    copy_side_files,
    folder_bytes,
    parse_size,
    read_config,
    staged_folder,
    write_hf_index,
    write_json,
)
from zprune_cli.export.masks import apply_masks
from zprune_cli.export.provenance import (
    model_card,
    read_provenance,
    safetensors_metadata,
    weights_updated,
    with_export,
    write_provenance,
)
from zprune_cli.progress import Progress, ensure

__all__ = ["FORMATS", "export", "load_pretrained", "apply_masks"]

FORMATS = ("hf", "sparse", "sparse-24-bitmask", "masks")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
log = logging.getLogger("zprune")


def export(
    src: str | Path,
    to: str | Path,
    format: str = "hf",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the pruned model in `src` (a zprune output folder) to the folder `to` in `format`.

    Returns a summary: destination, files, sizes in bytes (dense, stored, theoretical, on disk, and the
    same for the pruned weights alone), warnings and seconds. Raises ZpruneUsageError for a bad format,
    shard size or an existing destination without overwrite; ZpruneError for anything else.
    """
    start = time.perf_counter()
    if format not in FORMATS:
        raise ZpruneUsageError(f"unknown export format {format!r} (use {', '.join(FORMATS)})")
    source, dest = Path(src).expanduser(), Path(to).expanduser()
    provenance = read_provenance(source)
    max_bytes = parse_size(max_shard_size)
    check_destination(source, dest, overwrite)
    reader = WeightReader(source)
    pruned = _pruned_weights(reader, provenance)
    provenance = with_export(provenance, format, source.resolve())

    warnings: list[str] = []
    if format == "sparse-24-bitmask":
        for weight_name, module in pruned.items():  # in zprune.json's (model) order: name the first bad layer
            sparse24.check_24(module, reader.get(weight_name))
        warnings.append(sparse24.LEGACY_WARNING)
    if format == "masks" and weights_updated(provenance):
        warnings.append(
            f"{provenance.get('method')} {'with --reconstruct ' if provenance.get('reconstruct') else ''}changed the "
            "surviving weights too; masks only record which weights are zero, so applying them to the base "
            "model will not give this model back (export hf or sparse to keep the weights)"
        )
    for warning in warnings:
        log.warning(warning)

    with staged_folder(dest, overwrite) as tmp:
        job = _Job(reader, tmp, dest.name, provenance, pruned, max_bytes, ensure(progress))
        sizes, files = _WRITERS[format](job)
        disk = folder_bytes(tmp)
        weights_disk = sum((tmp / f).stat().st_size for f in files)

    return {
        "format": format,
        "source": str(source),
        "destination": str(dest),
        "files": files,
        "pruned_layers": len(pruned),
        "overall_sparsity": provenance.get("overall_sparsity"),
        **sizes.as_dict(),
        "weights_disk_bytes": weights_disk,
        "disk_bytes": disk,
        "warnings": warnings,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _pruned_weights(reader: WeightReader, provenance: dict) -> dict[str, str]:
    """{state-dict weight name: module name} for every layer zprune.json lists as pruned."""
    out: dict[str, str] = {}
    for module in provenance["pruned_layers"]:
        name = f"{module}.weight"
        if name not in reader:
            raise ZpruneError(f"zprune.json lists pruned layer {module}, but the weights hold no {name}")
        out[name] = module
    return out


# --- one writer per format ---------------------------------------------------------------------------

@dataclass
class _Job:
    reader: WeightReader
    folder: Path  # the temporary folder being filled
    name: str  # the destination's folder name (the model card's title)
    provenance: dict
    pruned: dict[str, str]  # weight name -> module name
    max_bytes: int
    progress: Progress


Encoder = Callable[[str, torch.Tensor], dict[str, torch.Tensor]]


def _write_tensors(job: _Job, writer: ShardWriter, encode_pruned: Encoder, encode_dense: Encoder | None) -> Sizes:
    """Stream every tensor of the source through the encoders into `writer`; count the sizes."""
    sizes = Sizes()
    with job.progress.task(f"writing {job.name}", total=len(job.reader.names)) as task:
        for name in job.reader.names:
            tensor = job.reader.get(name)
            if name in job.pruned:
                parts = encode_pruned(name, tensor)
                sizes.add_pruned(tensor, sum(tensor_bytes(t) for t in parts.values()))
            else:
                parts = encode_dense(name, tensor) if encode_dense else {}
                sizes.add_dense(tensor, sum(tensor_bytes(t) for t in parts.values()))
            if parts:
                writer.add(parts)
            task.advance()
    return sizes


def _model_folder_extras(job: _Job, fmt: str, config: dict) -> None:
    """config.json, tokenizer and other side files, zprune.json and the model card."""
    write_json(job.folder / "config.json", config)
    copy_side_files(job.reader.folder, job.folder)
    write_provenance(job.folder, job.provenance)
    (job.folder / "README.md").write_text(model_card(job.provenance, fmt, job.name), encoding="utf-8")


def _write_hf(job: _Job) -> tuple[Sizes, list[str]]:
    writer = ShardWriter(job.folder, hf.PREFIX, job.max_bytes, safetensors_metadata(job.provenance))
    sizes = _write_tensors(job, writer, hf.encode, hf.encode)
    weight_map = writer.close()
    write_hf_index(job.folder, weight_map, writer.total_bytes)
    _model_folder_extras(job, "hf", hf.clean_config(read_config(job.reader.folder)))
    return sizes, sorted(set(weight_map.values()))


def _write_sparse(job: _Job) -> tuple[Sizes, list[str]]:
    writer = ShardWriter(job.folder, sparse.PREFIX, job.max_bytes, safetensors_metadata(job.provenance))
    sizes = _write_tensors(job, writer, sparse.compress, hf.encode)
    weight_map = writer.close()
    write_json(job.folder / SPARSE_MANIFEST, sparse.manifest(list(job.pruned), weight_map, sizes.as_dict()))
    _model_folder_extras(job, "sparse", hf.clean_config(read_config(job.reader.folder)))
    return sizes, sorted(set(weight_map.values()))


def _write_sparse24(job: _Job) -> tuple[Sizes, list[str]]:
    writer = ShardWriter(job.folder, hf.PREFIX, job.max_bytes, safetensors_metadata(job.provenance))
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
        job.provenance.get("overall_sparsity") or 0.0, sorted(dense | {"lm_head"})
    )
    _model_folder_extras(job, "sparse-24-bitmask", config)
    return sizes, sorted(set(weight_map.values()))


def _write_masks(job: _Job) -> tuple[Sizes, list[str]]:
    # One file whatever the shard size: masks cost 1 bit per pruned weight.
    writer = ShardWriter(job.folder, "masks", 2**62, safetensors_metadata(job.provenance))
    sizes = _write_tensors(job, writer, lambda name, w: masks.encode(job.pruned[name], w), None)
    weight_map = writer.close()
    manifest = masks.manifest(job.provenance, list(job.pruned.values()), weights_updated(job.provenance))
    write_json(job.folder / masks.MANIFEST, manifest)
    return sizes, sorted(set(weight_map.values()))


_WRITERS: dict[str, Callable[[_Job], tuple[Sizes, list[str]]]] = {
    "hf": _write_hf,
    "sparse": _write_sparse,
    "sparse-24-bitmask": _write_sparse24,
    "masks": _write_masks,
}


# --- loading back ------------------------------------------------------------------------------------


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None):
    """Load a zprune output folder, an `hf`, `sparse` or `sparse-24-bitmask` export; return (model, tokenizer).

    The weights come back dense and bit-identical to the pruned model; dtype=None keeps the stored dtype
    (as the config records it), a dtype casts after loading. The tokenizer is None when the folder has no
    tokenizer files. The model is in eval mode on `device`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zprune_cli.models.load import DTYPES, first_line, quiet_transformers, resolve_device

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ZpruneError(f"{path} is not a folder")
    target_device = resolve_device(device)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ZpruneUsageError(f"unknown dtype '{dtype}' (use float32, float16 or bfloat16)")
        dtype = DTYPES[dtype]
    reader = WeightReader(folder)
    try:
        with quiet_transformers():
            if reader.kind == "dense":
                model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
            else:
                model = _from_state_dict(folder, reader)
    except (OSError, ValueError) as exc:
        raise ZpruneError(f"could not load {folder}: {first_line(exc)}") from exc
    if dtype is not None:
        model.to(dtype=dtype)
    model.to(target_device)
    model.eval()

    tokenizer = None
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        try:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ZpruneError(f"could not load the tokenizer in {folder}: {exc}") from exc
    return model, tokenizer


def _from_state_dict(folder: Path, reader: WeightReader):
    """Build the model class of folder/config.json around the decompressed tensors (no random init)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the compressed-tensors entry of a 2:4 export: we decompress ourselves
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ZpruneError(f"{folder}: transformers has no causal-LM class for model type {config.model_type!r}")
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    model, info = model_class.from_pretrained(
        None, config=config, state_dict=dict(reader.items()), dtype="auto", output_loading_info=True
    )
    tied = set(getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in info.get("missing_keys", []) if k not in tied]
    unexpected = list(info.get("unexpected_keys", []))
    if missing or unexpected:
        what = f"no tensor for {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise ZpruneError(f"{folder} does not match its config.json ({what})")
    return model
