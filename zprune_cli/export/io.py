"""Reading weights from any layout we write, writing safetensors shards, and publishing a folder atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zprune_cli.errors import ZpruneError, ZpruneUsageError
from zprune_cli.export.bits import tensor_bytes

HF_INDEX = "model.safetensors.index.json"
SPARSE_MANIFEST = "zprune-sparse.json"
MASKS_MANIFEST = "masks.json"
CT_CONFIG_KEY = "quantization_config"  # where compressed-tensors puts its sparsity_config
_TMP_MARK = ".zprune-tmp-"

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


@contextmanager
def staged_folder(dest: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary folder next to `dest`; on success it replaces `dest` by rename.

    On any error or Ctrl-C the temporary folder is removed and `dest` is left as it was.
    """
    parent = dest.parent
    tmp = parent / f".{dest.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise ZpruneError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if dest.exists():
            if not overwrite:  # appeared while we were writing
                raise ZpruneUsageError(f"destination {dest} exists; pass --overwrite to replace it")
            old = parent / f".{dest.name}{_TMP_MARK}old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ZpruneError(f"writing {dest} failed: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ZpruneError(f"{folder} has no config.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ZpruneError(f"cannot read {path}: {exc}") from None


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
        save_file(self._pending, str(path), metadata=self.metadata)
        os.chmod(path, 0o666 & ~_umask())  # safetensors writes 0600; give shards the usual mode
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


# --- reading weights -------------------------------------------------------------------------------


class WeightReader:
    """Dense tensors of a zprune output, an `hf` export, a `sparse` export or a `sparse-24-bitmask` export.

    `names` lists the dense state-dict names in stored order; `get(name)` returns one dense tensor,
    decompressing when needed, so an export never holds more than one layer beyond its current shard.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.kind = "dense"
        self._handles: dict[str, object] = {}
        self._decoders: dict[str, Callable[[], torch.Tensor]] = {}
        sparse_manifest = folder / SPARSE_MANIFEST
        if sparse_manifest.is_file():
            from zprune_cli.export.sparse import read_manifest

            manifest = read_manifest(sparse_manifest)
            self.kind = "sparse"
            self._weight_map = manifest["weight_map"]
            self.names = self._sparse_names(manifest)
            return
        if (folder / MASKS_MANIFEST).is_file() and not (folder / "config.json").is_file():
            raise ZpruneError(
                f"{folder} is a masks export, which holds no weights: apply it to the base model "
                "(zprune prune BASE --masks FILE, or zprune_cli.export.apply_masks)"
            )
        self._weight_map = self._dense_weight_map()
        config = read_config(folder)
        sparsity = (config.get(CT_CONFIG_KEY) or {}).get("sparsity_config") or {}
        if sparsity.get("format") == "sparse-24-bitmask":
            self.kind = "sparse-24-bitmask"
            self.names = self._sparse24_names()
        else:
            self.names = list(self._weight_map)

    def _dense_weight_map(self) -> dict[str, str]:
        index = self.folder / HF_INDEX
        if index.is_file():
            try:
                return dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
            except (OSError, KeyError, json.JSONDecodeError) as exc:
                raise ZpruneError(f"cannot read {index}: {exc}") from None
        single = self.folder / "model.safetensors"
        if single.is_file():
            return {name: single.name for name in self._handle(single.name).keys()}
        if any(self.folder.glob("*.bin")):
            raise ZpruneError(f"{self.folder} holds .bin weights; zprune exports read safetensors only")
        raise ZpruneError(f"{self.folder} has no safetensors weights (model.safetensors or {HF_INDEX})")

    def _handle(self, file: str):
        if file not in self._handles:
            path = self.folder / file
            if not path.is_file():
                raise ZpruneError(f"{self.folder} is incomplete: {file} is missing")
            self._handles[file] = safe_open(str(path), framework="pt", device="cpu")
        return self._handles[file]

    def stored(self, name: str) -> torch.Tensor:
        """One tensor exactly as stored."""
        return self._handle(self._weight_map[name]).get_tensor(name)

    def _sparse_names(self, manifest: dict) -> list[str]:
        from zprune_cli.export.sparse import SUFFIXES, decompress

        names: list[str] = []
        compressed = set(manifest["compressed"])
        for stored in self._weight_map:
            base, _, suffix = stored.rpartition(".")
            if base in compressed and f".{suffix}" in SUFFIXES:
                if base not in self._decoders:
                    self._decoders[base] = (lambda b=base: decompress({s: self.stored(b + s) for s in SUFFIXES}))
                    names.append(base)
            else:
                names.append(stored)
        missing = sorted(b + s for b in compressed for s in SUFFIXES if b + s not in self._weight_map)
        if missing:
            raise ZpruneError(f"{self.folder / SPARSE_MANIFEST} is incomplete: no shard holds {missing[0]}")
        return names

    def _sparse24_names(self) -> list[str]:
        from zprune_cli.export.sparse24 import SUFFIXES, decompress

        names: list[str] = []
        stored = set(self._weight_map)
        for name in self._weight_map:
            module, _, suffix = name.rpartition(".")
            if f".{suffix}" in SUFFIXES and all(module + s in stored for s in SUFFIXES):
                if suffix == "compressed":
                    weight = f"{module}.weight"
                    self._decoders[weight] = (lambda m=module: decompress({s: self.stored(m + s) for s in SUFFIXES}))
                    names.append(weight)
            else:
                names.append(name)
        return names

    def stored_shape(self, name: str) -> list[int]:
        """Shape of a tensor stored dense, read from the header only."""
        return list(self._handle(self._weight_map[name]).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        decoder = self._decoders.get(name)
        return decoder() if decoder is not None else self.stored(name)

    def __contains__(self, name: str) -> bool:
        if not hasattr(self, "_name_set"):
            self._name_set = set(self.names)
        return name in self._name_set

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names:
            yield name, self.get(name)


# --- size accounting -------------------------------------------------------------------------------


class Sizes:
    """Bytes of tensor data (headers excluded): dense as in the source, as stored, and the bitmask ideal.

    theoretical = for each pruned weight, its non-zero values plus one bit per entry; other tensors dense.
    The pruned_* figures count the pruned weights alone, where the formats differ.
    """

    def __init__(self) -> None:
        self.dense = self.stored = self.theoretical = 0
        self.pruned_dense = self.pruned_stored = self.pruned_theoretical = 0

    def add_dense(self, tensor: torch.Tensor, stored: int | None = None) -> None:
        size = tensor_bytes(tensor)
        self.dense += size
        self.theoretical += size
        self.stored += size if stored is None else stored

    def add_pruned(self, weight: torch.Tensor, stored: int) -> None:
        from zprune_cli.export.bits import packed_bytes, stored_nonzero

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
