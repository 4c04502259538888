"""Bit packing shared by the sparse, sparse-24-bitmask and masks layouts.

A packed mask is numpy.packbits with bitorder="little": bit k of byte j (value 1 << k) holds
element 8*j + k, so element 0 is the lowest bit of byte 0. compressed-tensors uses the same order.
"""

from __future__ import annotations

from zprune_cli.base.lazy import lazy

np = lazy("numpy")
torch = lazy("torch")

BIT_ORDER = "little"

# Same-width integer views, to tell stored bits apart: -0.0 is "non-zero" to a bit test.
_INT_VIEW = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}  # torch's names


def pack(mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """bool tensor -> uint8 tensor. axis=None packs the flattened mask (1-D, ceil(numel/8) bytes);
    axis=-1 packs each row on its own ([rows, ceil(cols/8)], the compressed-tensors layout)."""
    array = mask.detach().to("cpu", torch.bool).contiguous().numpy()
    if axis is None:
        array = array.reshape(-1)
        axis = 0
    return torch.from_numpy(np.packbits(array, axis=axis, bitorder=BIT_ORDER))


def unpack(packed: torch.Tensor, shape: list[int] | tuple[int, ...], per_row: bool = False) -> torch.Tensor:
    """uint8 tensor from `pack` -> bool tensor of `shape`."""
    array = packed.detach().to("cpu").contiguous().numpy()
    if per_row:
        bits = np.unpackbits(array, axis=-1, count=int(shape[-1]), bitorder=BIT_ORDER)
    else:
        bits = np.unpackbits(array.reshape(-1), count=int(np.prod(shape)), bitorder=BIT_ORDER)
    return torch.from_numpy(bits.astype(bool)).reshape(tuple(int(s) for s in shape))


def packed_bytes(numel: int) -> int:
    return (numel + 7) // 8


def stored_nonzero(weight: torch.Tensor) -> torch.Tensor:
    """True where the stored bits are not all zero (so -0.0 is kept and round-trips bit for bit)."""
    if weight.dtype.is_floating_point and weight.element_size() in _INT_VIEW:
        return weight.view(getattr(torch, _INT_VIEW[weight.element_size()])) != 0
    return weight != 0


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
