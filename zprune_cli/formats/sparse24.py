"""The legacy compressed-tensors `sparse-24-bitmask` layout, for 2:4-pruned weights.

As compressed-tensors' Sparse24BitMaskCompressor wrote it (up to release 0.14), for a Linear module `<m>`
whose weight W [out, in] keeps at most 2 non-zeros in every group of 4 consecutive input columns:

    <m>.compressed  W's dtype [out, in/2]: the 2 kept entries of each group, row-major
    <m>.bitmask     uint8 [out, ceil(in/8)]: each row packed by numpy.packbits(bitorder="little"), 1 = kept
    <m>.shape       int64 [2, 1]: [[out], [in]]

Other tensors are stored dense; shards and index carry transformers' names; config.json gets
`quantization_config = {"quant_method": "compressed-tensors", "sparsity_config": {"format":
"sparse-24-bitmask", "sparsity_structure": "2:4", ...}}`. compressed-tensors > 0.14 and current vLLM
releases no longer load it; `zprune_cli.load_pretrained` does.
"""

from __future__ import annotations

from zprune_cli.base.lazy import lazy
from zprune_cli.base.sparsity import nm_violation
from zprune_cli.base.errors import ZpruneError
from zprune_cli.formats.bits import pack, packed_bytes, stored_nonzero, unpack

torch = lazy("torch")

FORMAT_NAME = "sparse-24-bitmask"
SUFFIXES = (".shape", ".compressed", ".bitmask")
CT_LAYOUT_VERSION = "0.14.0"  # the last compressed-tensors release that reads this layout
LEGACY_WARNING = (
    "sparse-24-bitmask is a legacy layout: current vLLM and compressed-tensors (> 0.14) releases no longer "
    "load it; zprune_cli.load_pretrained does"
)


def check_24(name: str, weight: torch.Tensor) -> None:
    """Raise ZpruneError unless every group of 4 input columns of every row holds at least 2 zeros."""
    if weight.dim() != 2:
        raise ZpruneError(f"layer {name} holds MoE experts fused into one tensor of shape {list(weight.shape)}; "
                          "sparse-24-bitmask stores 2-D layers only, so export as sparse or hf")
    if weight.shape[1] % 4 != 0:
        raise ZpruneError(
            f"layer {name} (shape {list(weight.shape)}) cannot be 2:4: its input width is not a multiple of 4"
        )
    bad = nm_violation(weight, 2, 4)
    if bad is not None and weight.shape[0] % 4 == 0 and nm_violation(weight.t(), 2, 4) is None:
        # 2:4 along the stored rows: a weight stored [in, out] (GPT-2's Conv1D), pruned on its real inputs
        raise ZpruneError(
            f"layer {name} (stored shape {list(weight.shape)}) is 2:4 along its first dimension: its weight is "
            "stored [in, out] (a Conv1D layer), and sparse-24-bitmask groups the second; export as sparse or hf"
        )
    if bad is not None:
        row, group, nonzeros = bad
        raise ZpruneError(
            f"layer {name} is not 2:4 sparse (row {row}, input columns {4 * group}-{4 * group + 3} hold "
            f"{nonzeros} non-zeros); sparse-24-bitmask needs 2 zeros in every group of 4, "
            "so prune with --pattern 2:4 or export as sparse"
        )


def keep_mask(weight: torch.Tensor) -> torch.Tensor:
    """Exactly 2 kept entries per group of 4: the non-zeros first (a stored -0.0 before +0.0), then the
    earliest zeros. The key is distinct within a group, so the choice is deterministic."""
    rows, cols = weight.shape
    position = torch.arange(3, -1, -1).repeat(cols // 4)  # [in]: 3, 2, 1, 0, 3, 2, ...
    key = (weight != 0).int() * 8 + stored_nonzero(weight).int() * 4 + position  # [out, in]
    top = key.reshape(rows, cols // 4, 4).topk(2, dim=-1).indices  # [out, in/4, 2]
    keep = torch.zeros(rows, cols // 4, 4, dtype=torch.bool)
    keep.scatter_(-1, top, True)
    return keep.reshape(rows, cols)


def compress(module: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A 2:4 weight (checked by check_24) -> its three stored tensors."""
    rows, cols = weight.shape
    keep = keep_mask(weight)
    return {
        f"{module}.shape": torch.tensor([rows, cols], dtype=torch.int64).reshape(-1, 1),
        f"{module}.compressed": weight[keep].reshape(rows, cols // 2),
        f"{module}.bitmask": pack(keep, axis=-1),
    }


def decompress(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = parts[".shape"].flatten().tolist()
    keep = unpack(parts[".bitmask"], shape, per_row=True)
    compressed = parts[".compressed"]
    if int(keep.sum()) != compressed.numel():
        raise ZpruneError(
            f"corrupt 2:4 weight: its bitmask marks {int(keep.sum())} entries, its values hold {compressed.numel()}"
        )
    dense = torch.zeros(keep.shape, dtype=compressed.dtype)
    dense[keep] = compressed.flatten()
    return dense


def stored_bytes(weight: torch.Tensor) -> int:
    rows, cols = weight.shape
    return rows * cols // 2 * weight.element_size() + rows * packed_bytes(cols) + 16


def quantization_config(global_sparsity: float, ignore: list[str]) -> dict:
    """The config.json entry compressed-tensors wrote for a sparse-only 2:4 model."""
    return {
        "config_groups": {},
        "format": "dense",
        "ignore": [],
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {
            "format": FORMAT_NAME,
            "global_sparsity": global_sparsity,
            "ignore": ignore,
            "registry_requires_subclass": False,
            "sparsity_structure": "2:4",
            "targets": ["Linear"],
        },
        "version": CT_LAYOUT_VERSION,
    }
