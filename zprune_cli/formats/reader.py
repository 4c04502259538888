"""Reading weights from any layout zprune writes: a pruned folder, an `hf`, `sparse` or `sparse-24-bitmask`
export. Used by `export` (to stream a folder into another layout) and by `models` (to load a compressed
export), so it sits below both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from safetensors import SafetensorError, safe_open

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy
from zprune_cli.formats.masks import MANIFEST as MASKS_MANIFEST

torch = lazy("torch")

HF_INDEX = "model.safetensors.index.json"
SPARSE_MANIFEST = "zprune-sparse.json"
CT_CONFIG_KEY = "quantization_config"  # where compressed-tensors puts its sparsity_config


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ZpruneError(f"{folder} has no config.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ZpruneError(f"cannot read {path}: {exc}") from None


def layout_of(folder: Path) -> str:
    """'sparse', 'sparse-24-bitmask' or 'dense' (anything transformers loads itself, .bin included),
    from the side files alone: no weight is opened."""
    if (folder / SPARSE_MANIFEST).is_file():
        return "sparse"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "dense"
    sparsity = ((config.get(CT_CONFIG_KEY) or {}) if isinstance(config, dict) else {}).get("sparsity_config") or {}
    return "sparse-24-bitmask" if isinstance(sparsity, dict) and sparsity.get("format") == "sparse-24-bitmask" else "dense"


class WeightReader:
    """Dense tensors of a zprune output, an `hf` export, a `sparse` export or a `sparse-24-bitmask` export.

    `names` lists the dense state-dict names in stored order; `get(name)` returns one dense tensor,
    decompressing when needed, so an export never holds more than one layer beyond its current shard.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.kind = layout_of(folder)
        self._handles: dict[str, object] = {}
        self._decoders: dict[str, Callable[[], torch.Tensor]] = {}
        if self.kind == "sparse":
            from zprune_cli.formats.sparse import read_manifest

            manifest = read_manifest(folder / SPARSE_MANIFEST)
            self._weight_map = manifest["weight_map"]
            self.names = self._sparse_names(manifest)
            return
        if (folder / MASKS_MANIFEST).is_file() and not (folder / "config.json").is_file():
            raise ZpruneError(
                f"{folder} is a masks export, which holds no weights: apply it to the base model "
                "(zprune prune BASE --masks FILE, or zprune_cli.exports.apply_masks)"
            )
        self._weight_map = self._dense_weight_map()
        read_config(folder)  # a folder without a readable config.json is refused here, as before
        if self.kind == "sparse-24-bitmask":
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
            try:
                self._handles[file] = safe_open(str(path), framework="pt", device="cpu")
            except (SafetensorError, OSError) as exc:
                raise ZpruneError(f"cannot read {path}: {exc} (the file is damaged or truncated)") from None
        return self._handles[file]

    def stored(self, name: str) -> torch.Tensor:
        """One tensor exactly as stored."""
        return self._handle(self._weight_map[name]).get_tensor(name)

    def _sparse_names(self, manifest: dict) -> list[str]:
        from zprune_cli.formats.sparse import SUFFIXES, decompress

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
        from zprune_cli.formats.sparse24 import SUFFIXES, decompress

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
