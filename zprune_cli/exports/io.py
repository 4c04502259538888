"""Writing exports: safetensors shards, the HF index, side files, size accounting and destination checks."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from zprune_cli.base.lazy import lazy
from zprune_cli.base.staging import readable_mode
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.formats.bits import tensor_bytes

from zprune_cli.formats.reader import HF_INDEX, SPARSE_MANIFEST

torch = lazy("torch")
safetensors_torch = lazy("safetensors.torch")

# Files of a source folder that an export writes itself instead of copying.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_REWRITTEN = {"zprune.json", "README.md", "config.json", HF_INDEX, SPARSE_MANIFEST, "pytorch_model.bin.index.json"}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal like transformers), '2GiB' -> 2 * 2**30, '1000' -> 1000 bytes."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise ZpruneUsageError(f"invalid shard size {text!r}: use bytes or a size such as 500MB, 5GB or 2GiB")
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])
    if value <= 0:
        raise ZpruneUsageError(f"shard size must be positive (got {text!r})")
    return value


# --- publishing a folder ---------------------------------------------------------------------------


def check_destination(source: Path, dest: Path, overwrite: bool) -> None:
    """Refuse what would lose data before anything is read or written."""
    src, dst = source.resolve(), dest.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise ZpruneUsageError(f"destination {dest} overlaps the source folder {source}; pick another --to")
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise ZpruneUsageError(f"destination {dest} exists and is not a folder")
        if not overwrite:
            raise ZpruneUsageError(f"destination {dest} exists; pass --overwrite to replace it")


def copy_side_files(source: Path, dest: Path) -> list[str]:
    """Copy tokenizer, generation config, chat template, custom code: every plain file except weights
    and the files an export rewrites (config.json, zprune.json, README.md, weight indexes)."""
    copied = []
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name in _REWRITTEN:
            continue
        if path.suffix in _WEIGHT_SUFFIXES or path.name.endswith(".index.json"):
            continue
        shutil.copy2(path, dest / path.name)
        copied.append(path.name)
    return copied


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- writing shards --------------------------------------------------------------------------------


class ShardWriter:
    """Writes tensors into safetensors shards of at most `max_bytes` (a larger group gets its own shard).

    Shards are named like transformers' (`model-00001-of-00003.safetensors`, or `model.safetensors`
    when there is one) and each carries the same header metadata.
    """

    def __init__(self, folder: Path, prefix: str, max_bytes: int, metadata: dict[str, str]):
        self.folder, self.prefix, self.max_bytes, self.metadata = folder, prefix, max_bytes, metadata
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """Add tensors that belong together (a compressed weight's parts stay in one shard)."""
        size = sum(tensor_bytes(t) for t in tensors.values())
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self._flush()
        for name, tensor in tensors.items():
            self._pending[name] = tensor.detach().to("cpu").contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.folder / f".shard-{len(self._written):05d}.safetensors"
        safetensors_torch.save_file(self._pending, str(path), metadata=self.metadata)
        os.chmod(path, readable_mode())  # safetensors writes 0600; give shards the usual mode
        self._written.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> dict[str, str]:
        """Flush, name the shards, and return the weight map (tensor name -> file name)."""
        if self._pending or not self._written:
            self._flush()
        count = len(self._written)
        weight_map: dict[str, str] = {}
        for i, (path, names) in enumerate(self._written):
            suffix = "" if count == 1 else f"-{i + 1:05d}-of-{count:05d}"
            name = f"{self.prefix}{suffix}.safetensors"
            path.rename(self.folder / name)
            weight_map.update({n: name for n in names})
        return weight_map


def write_hf_index(folder: Path, weight_map: dict[str, str], total_bytes: int) -> None:
    """The index transformers reads for sharded checkpoints (only written when there are several)."""
    if len(set(weight_map.values())) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        write_json(folder / HF_INDEX, index)


# --- size accounting -------------------------------------------------------------------------------


class Sizes:
    """Bytes of tensor data (headers excluded): dense as in the source, as stored, and the bitmask ideal.

    theoretical = for each pruned weight, its non-zero values plus one bit per entry; other tensors dense.
    The pruned_* figures count the pruned weights alone, where the formats differ.
    """

    def __init__(self) -> None:
        self.dense = self.stored = self.theoretical = 0
        self.pruned_dense = self.pruned_stored = self.pruned_theoretical = 0
        self.blocks_bf16 = self.blocks_stored = 0  # the decoder blocks' tensors: in bfloat16, as stored

    def add_block(self, tensor: torch.Tensor, stored: int) -> None:
        """A tensor of a decoder block (the pruned layers' blocks), counted again for the blocks' ratio."""
        self.blocks_bf16 += tensor.numel() * 2 if tensor.is_floating_point() else tensor_bytes(tensor)
        self.blocks_stored += stored

    def add_dense(self, tensor: torch.Tensor, stored: int | None = None) -> None:
        size = tensor_bytes(tensor)
        self.dense += size
        self.theoretical += size
        self.stored += size if stored is None else stored

    def add_pruned(self, weight: torch.Tensor, stored: int) -> None:
        from zprune_cli.formats.bits import packed_bytes, stored_nonzero

        dense = tensor_bytes(weight)
        ideal = int(stored_nonzero(weight).sum()) * weight.element_size() + packed_bytes(weight.numel())
        self.dense += dense
        self.stored += stored
        self.theoretical += ideal
        self.pruned_dense += dense
        self.pruned_stored += stored
        self.pruned_theoretical += ideal

    def as_dict(self) -> dict[str, int]:
        return {
            "dense_bytes": self.dense,
            "stored_bytes": self.stored,
            "theoretical_bytes": self.theoretical,
            "pruned_dense_bytes": self.pruned_dense,
            "pruned_stored_bytes": self.pruned_stored,
            "pruned_theoretical_bytes": self.pruned_theoretical,
        }

    def blocks_dict(self) -> dict[str, int]:
        return {"blocks_bf16_bytes": self.blocks_bf16, "blocks_stored_bytes": self.blocks_stored}


def block_prefixes(modules) -> tuple[str, ...]:
    """'model.layers.3.' for every pruned module 'model.layers.3.mlp.up_proj': the decoder blocks' names."""
    prefixes = set()
    for module in modules:
        parts = module.split(".")
        index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if index is not None:
            prefixes.add(".".join(parts[: index + 1]) + ".")
    return tuple(sorted(prefixes))
