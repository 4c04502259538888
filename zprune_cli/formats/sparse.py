"""The `sparse` layout: each pruned weight as its non-zero values plus a packed bitmask.

For a pruned weight W (state-dict name `<name>`, e.g. `model.layers.0.mlp.up_proj.weight`, shape [out, in]):

    <name>.values   1-D, W's dtype: the entries whose stored bits are not all zero, in row-major order
    <name>.bitmask  uint8 [ceil(out*in / 8)]: numpy.packbits(mask.flatten(), bitorder="little"),
                    bit = 1 where a value is stored (element 8j+k is bit k, value 1 << k, of byte j)
    <name>.shape    int64 [2]: [out, in]

Every other tensor is stored dense under its own name. Shards are `zprune-sparse[-0000i-of-0000n].safetensors`
(never `model.safetensors`, so plain transformers refuses the folder instead of loading random weights),
and `zprune-sparse.json` names the layout, its version, the compressed weights and the weight map.

At sparsity s a b-byte weight costs (1 - s)·b + 1/8 bytes instead of b: 53% of dense at 50% in fp32,
56% in bf16. We write our own layout because compressed-tensors 0.20 (the current release) has removed its
sparse-bitmask compressor and refuses a `sparsity_config` when loading.
"""

from __future__ import annotations

import json
from pathlib import Path

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy
from zprune_cli.formats.bits import BIT_ORDER, pack, packed_bytes, stored_nonzero, unpack

torch = lazy("torch")

FORMAT_NAME = "zprune-sparse"
LAYOUT_VERSION = 1
PREFIX = "zprune-sparse"
SUFFIXES = (".values", ".bitmask", ".shape")

LAYOUT_DOC = {
    "<name>.values": "1-D, the weight's dtype: entries whose stored bits are not all zero, row-major order",
    "<name>.bitmask": "uint8 [ceil(numel/8)]: numpy.packbits(mask.flatten(), bitorder='little'); 1 = value stored",
    "<name>.shape": "int64 [ndim]: the dense shape",
    "other tensors": "dense, under their own names",
}


def compress(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """One dense weight -> its three stored tensors."""
    keep = stored_nonzero(weight)  # [out, in] bool
    return {
        f"{name}.values": weight[keep],  # row-major: boolean indexing walks the flattened tensor in order
        f"{name}.bitmask": pack(keep),
        f"{name}.shape": torch.tensor(list(weight.shape), dtype=torch.int64),
    }


def decompress(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """{'.values', '.bitmask', '.shape'} -> the dense weight, bit for bit."""
    values, bitmask, shape = parts[".values"], parts[".bitmask"], parts[".shape"].tolist()
    keep = unpack(bitmask, shape)
    if int(keep.sum()) != values.numel():
        raise ZpruneError(
            f"corrupt sparse weight: its bitmask marks {int(keep.sum())} entries, its values hold {values.numel()}"
        )
    # masked_scatter_ fills the kept positions in row-major order, as `compress` stored them; measured on a
    # 1536 x 576 weight it takes 3.4 ms where boolean-index assignment took 7.3 ms
    return torch.zeros(keep.shape, dtype=values.dtype).masked_scatter_(keep, values)


def stored_bytes(weight: torch.Tensor) -> int:
    """Bytes `compress` stores for this weight."""
    return int(stored_nonzero(weight).sum()) * weight.element_size() + packed_bytes(weight.numel()) + 8 * weight.dim()


def manifest(compressed: list[str], weight_map: dict[str, str], sizes: dict[str, int]) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": LAYOUT_VERSION,
        "bit_order": BIT_ORDER,
        "layout": LAYOUT_DOC,
        "compressed": compressed,
        "sizes": sizes,
        "weight_map": dict(sorted(weight_map.items())),
    }


def read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ZpruneError(f"cannot read {path}: {exc}") from None
    if data.get("format") != FORMAT_NAME or data.get("version") != LAYOUT_VERSION:
        raise ZpruneError(
            f"{path} describes {data.get('format')!r} version {data.get('version')!r}; "
            f"this zprune reads {FORMAT_NAME} version {LAYOUT_VERSION}"
        )
    if data.get("bit_order") != BIT_ORDER or not isinstance(data.get("weight_map"), dict):
        raise ZpruneError(f"{path} is malformed (bit_order or weight_map)")
    return data
