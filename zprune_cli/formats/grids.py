"""`zprune-quant.safetensors`: the quantization grids of a folder pruned with --wbits.

A quantized folder stores its weights dequantized (scale * (q - zero), in the output dtype: a folder any
tool loads); this file beside them keeps what a packed export needs to recover the integers. For every
quantized layer `<m>` (module name):

    <m>.scale   float32 [out, groups]  (bfloat16-exact values; groups = in / group_size, 1 per channel)
    <m>.zero    uint8   [out, groups]  in 0..2^bits - 1: weight = scale * (q - zero), q in 0..2^bits - 1

The bits, group size, symmetry and act-order are the recipe's, in zprune.json. transformers ignores the
file (it reads model.safetensors or its index only).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy

torch = lazy("torch")
safetensors_torch = lazy("safetensors.torch")

GRIDS_FILE = "zprune-quant.safetensors"


def write_grids(folder: Path, grids: dict[str, tuple[torch.Tensor, torch.Tensor]], metadata: dict[str, str]) -> None:
    """grids: module name -> (scale, zero)."""
    tensors = {}
    for module, (scale, zero) in grids.items():
        tensors[f"{module}.scale"] = scale.detach().to("cpu", torch.float32).contiguous()
        tensors[f"{module}.zero"] = zero.detach().to("cpu", torch.uint8).contiguous()
    safetensors_torch.save_file(tensors, str(Path(folder) / GRIDS_FILE), metadata=metadata)


def read_grids(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (scale, zero); ZpruneError when the file is missing, damaged or incomplete."""
    path = Path(folder) / GRIDS_FILE
    if not path.is_file():
        raise ZpruneError(f"{folder} holds no quantization grids ({GRIDS_FILE}); it was not pruned with --wbits, "
                          "or it was copied without that file")
    try:
        tensors = safetensors_torch.load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ZpruneError(f"cannot read {path}: {exc} (the file is damaged or truncated)") from None
    modules = {name.rpartition(".")[0] for name in tensors}
    broken = sorted(m for m in modules if f"{m}.scale" not in tensors or f"{m}.zero" not in tensors)
    if broken:
        raise ZpruneError(f"{path} is incomplete: layer {broken[0]} lacks its scale or zero")
    return {m: (tensors[f"{m}.scale"], tensors[f"{m}.zero"]) for m in sorted(modules)}
