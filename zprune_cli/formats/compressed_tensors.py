"""The compressed-tensors `pack-quantized` layout, for weights quantized with --wbits (vLLM and transformers,
through the `compressed-tensors` package, load it).

For a quantized Linear `<m>` with weight W [out, in] on b-bit grids of `group_size` columns (G = in /
group_size groups; G = 1 per channel), as compressed-tensors' PackedQuantizationCompressor writes it:

    <m>.weight_packed      int32 [out, ceil(in * b / 32)]: the signed levels q - 2^(b-1), packed by
                           compressed_tensors' pack_to_int32 (32 consecutive entries in b words)
    <m>.weight_scale       the export dtype, [out, G]
    <m>.weight_zero_point  int32 [ceil(out * b / 32), G]: zero - 2^(b-1), packed along the rows
                           (asymmetric grids only; a symmetric grid's zero point is 0)
    <m>.weight_shape       int64 [2]: [out, in]

Dequantized: scale * (packed level - zero point), the same value as zprune's scale * (q - zero). Other
tensors stay dense. config.json gets `quantization_config`: one config group targeting Linear with the
grids' arguments (strategy "group" or "channel"; act-order as `actorder: "weight"`, which changes no
tensor), every other 2-D weight in `ignore`, format "pack-quantized", status "compressed", built with the
package's own pydantic models. The sparsity is recorded as compressed-tensors recorded a sparse model
stored dense: `sparsity_config = {"format": "dense", "sparsity_structure": "2:4" | "unstructured",
"global_sparsity": s}`, with no `targets` (vLLM >= 0.24 refuses any sparsity_config that names targets,
vllm-project/vllm#51188; no released kernel runs sparse + quantized weights any more, so the zeros are
stored, not skipped).

compressed-tensors is an optional dependency (`pip install zprune[compressed-tensors]`): imported here
only when an export is written.
"""

from __future__ import annotations

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy

torch = lazy("torch")

FORMAT_NAME = "compressed-tensors"
PACK_FORMAT = "pack-quantized"
SUFFIXES = (".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape")
SERVED_BITS = (4, 8)  # the widths vLLM's compressed-tensors W*A16 kernels take


def _package():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise ZpruneError("export --format compressed-tensors needs the compressed-tensors package: "
                          "pip install 'zprune[compressed-tensors]' (or pip install compressed-tensors)") from None
    return compressed_tensors


def levels(module: str, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
           stored_dtype: torch.dtype) -> torch.Tensor:
    """The grid levels q (int16 [out, in], 0..2^bits - 1) of a saved weight, checked: scale * (q - zero) in
    `stored_dtype` (the precision the folder holds) must give the saved weight back bit for bit."""
    if weight.dim() != 2:
        raise ZpruneError(f"layer {module} holds MoE experts fused into one tensor of shape {list(weight.shape)}; "
                          "compressed-tensors pack-quantized stores 2-D Linear weights only")
    columns = weight.shape[1]
    if scale.shape[0] != weight.shape[0] or columns % scale.shape[1]:
        raise ZpruneError(f"layer {module}: its grids {list(scale.shape)} do not fit its weight {list(weight.shape)}")
    width = columns // scale.shape[1]
    scale_full = scale.float().repeat_interleave(width, dim=1)
    zero_full = zero.float().repeat_interleave(width, dim=1)
    q = (torch.round(weight.float() / scale_full) + zero_full).clamp(0, 2**bits - 1)
    back = (scale_full * (q - zero_full)).to(stored_dtype).to(weight.dtype)
    if not torch.equal(back, weight):
        bad = int((back != weight).sum())
        raise ZpruneError(f"layer {module}: {bad} weight(s) are not on their recorded grid (were the weights "
                          "changed after pruning?); export hf or sparse instead")
    return q.to(torch.int16)


def encode(module: str, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, sym: bool,
           dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One layer's levels q [out, in] (0..2^bits - 1) and grids -> its stored tensors (scale in `dtype`)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    _package()
    offset = 2 ** (bits - 1)  # compressed-tensors stores signed levels
    parts = {
        f"{module}.weight_packed": pack_to_int32((q - offset).to(torch.int8), bits),
        f"{module}.weight_scale": scale.to(dtype),
        f"{module}.weight_shape": torch.tensor(list(q.shape), dtype=torch.int64),
    }
    if not sym:
        parts[f"{module}.weight_zero_point"] = pack_to_int32((zero.to(torch.int16) - offset).to(torch.int8), bits, packed_dim=0)
    return parts


def decode(parts: dict[str, torch.Tensor], bits: int, sym: bool) -> torch.Tensor:
    """The stored tensors of one layer (keys: SUFFIXES) -> its dequantized weight, float32 [out, in]."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    shape = parts[".weight_shape"].tolist()
    q = unpack_from_int32(parts[".weight_packed"], bits, torch.Size(shape)).float()
    scale = parts[".weight_scale"].float()
    zero = torch.zeros_like(scale) if sym else \
        unpack_from_int32(parts[".weight_zero_point"], bits, torch.Size([shape[0], scale.shape[1]]), packed_dim=0).float()
    width = shape[1] // scale.shape[1]
    return scale.repeat_interleave(width, dim=1) * (q - zero.repeat_interleave(width, dim=1))


def quantization_config(bits: int, group_size: int, sym: bool, act_order: bool, ignore: list[str],
                        sparsity: float, structure: str) -> dict:
    """config.json's `quantization_config`, as compressed-tensors' ModelCompressor writes it."""
    package = _package()
    from compressed_tensors.config import DenseSparsityConfig
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, dynamic=False, observer="minmax",
                               strategy="group" if group_size else "channel", group_size=group_size or None,
                               actorder="weight" if act_order else None)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, format=PACK_FORMAT)
    config = QuantizationConfig(config_groups={"group_0": scheme}, format=PACK_FORMAT,
                                quantization_status="compressed", ignore=sorted(ignore))
    sparse = {}
    if sparsity > 0:
        sparse = DenseSparsityConfig(global_sparsity=round(sparsity, 6), sparsity_structure=structure).model_dump(
            exclude={"targets", "ignore"})
    return {"version": package.__version__, "quant_method": "compressed-tensors", "sparsity_config": sparse,
            "transform_config": {}, **config.model_dump(exclude={"quant_method"})}
