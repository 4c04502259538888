"""The `masks` layout: which weights were pruned, and nothing else, to re-apply to the base model.

`masks.safetensors` holds, for each pruned Linear module `<m>` with weight [out, in] (or MoE experts fused
into one parameter `<m>` of shape [experts, out, in]):

    <m>.mask   uint8 [ceil(numel / 8)]: numpy.packbits(prune_mask.flatten(), bitorder="little"),
               bit = 1 where the weight is pruned (set to zero), as in zprune_cli.base.masks
    <m>.shape  int64 [ndim]: the weight's stored shape

`masks.json` names the layout, the base model (with its fingerprint) and the pruning settings. The mask
is read off the pruned weights (exact zeros), so applying it to the base model gives back the pruned
weights only when pruning changed no surviving weight (not SparseGPT, not --reconstruct).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy
from zprune_cli.formats.bits import BIT_ORDER, pack, packed_bytes, unpack

torch = lazy("torch")

FORMAT_NAME = "zprune-masks"
LAYOUT_VERSION = 1
MASKS_FILE = "masks.safetensors"
MANIFEST = "masks.json"
SUFFIXES = (".mask", ".shape")


def encode(module: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        f"{module}.mask": pack(weight == 0),  # True = pruned; -0.0 counts as pruned
        f"{module}.shape": torch.tensor(list(weight.shape), dtype=torch.int64),
    }


def stored_bytes(weight: torch.Tensor) -> int:
    return packed_bytes(weight.numel()) + 8 * weight.dim()


def manifest(provenance: dict[str, Any], modules: list[str], weights_updated: bool) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": LAYOUT_VERSION,
        "bit_order": BIT_ORDER,
        "mask_bit": "1 = pruned (weight set to zero)",
        "file": MASKS_FILE,
        "base_model": provenance.get("base_model") or {},
        "weights_updated": weights_updated,
        "modules": modules,
        "settings": {k: provenance.get(k) for k in ("recipe", "recipe_digest", "stats_key", "calibration", "overall_sparsity")},
        "zprune_version": provenance.get("zprune_version"),
    }


def _locate(masks_path: str | Path) -> tuple[Path, dict]:
    path = Path(masks_path).expanduser()
    file = path / MASKS_FILE if path.is_dir() else path
    if not file.is_file():
        raise ZpruneError(f"no masks at {masks_path} (expected a masks export folder or its {MASKS_FILE})")
    manifest_path = file.parent / MANIFEST
    if not manifest_path.is_file():
        raise ZpruneError(f"{file.parent} has no {MANIFEST}; not a zprune masks export")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ZpruneError(f"cannot read {manifest_path}: {exc}") from None
    if data.get("format") != FORMAT_NAME or data.get("version") != LAYOUT_VERSION or data.get("bit_order") != BIT_ORDER:
        raise ZpruneError(
            f"{manifest_path} describes {data.get('format')!r} version {data.get('version')!r}; "
            f"this zprune reads {FORMAT_NAME} version {LAYOUT_VERSION}"
        )
    return file, data


def read_masks(masks_path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Return ({module: bool prune mask [out, in]}, masks.json)."""
    file, data = _locate(masks_path)
    masks: dict[str, torch.Tensor] = {}
    with safe_open(str(file), framework="pt", device="cpu") as handle:
        names = set(handle.keys())
        for module in data.get("modules", []):
            if f"{module}.mask" not in names or f"{module}.shape" not in names:
                raise ZpruneError(f"{file} is incomplete: no mask for {module}")
            shape = handle.get_tensor(f"{module}.shape").tolist()
            masks[module] = unpack(handle.get_tensor(f"{module}.mask"), shape)
    return masks, data


def apply_masks(model: torch.nn.Module, masks_path: str | Path, fingerprint: str | None = None) -> int:
    """Zero the weights of `model` (the dense base model) that the masks mark pruned; return the number
    of layers masked.

    `masks_path` is a `masks` export folder or its masks.safetensors. With `fingerprint` (the base
    model's ModelSource.fingerprint), refuse masks made from another model. Every shape is checked before
    any weight changes, so a mismatch leaves the model untouched.
    """
    masks = checked_masks(model, masks_path, fingerprint)[0]
    zero_masked(model, masks)
    return len(masks)


def checked_masks(model: torch.nn.Module, masks_path: str | Path,
                  fingerprint: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(masks by tensor owner, masks.json) once every mask is known to fit `model`: same base model (by
    fingerprint), a tensor of the mask's shape for each. Reads shapes only, so a model whose blocks are
    still on disk (meta tensors) is checked as well."""
    masks, data = read_masks(masks_path)
    expected = (data.get("base_model") or {}).get("fingerprint")
    if fingerprint is not None and expected and fingerprint != expected:
        spec = (data.get("base_model") or {}).get("spec", "another model")
        raise ZpruneError(
            f"the masks were made from {spec} (fingerprint {expected}), not this model (fingerprint {fingerprint})"
        )
    for module, mask in masks.items():
        weight = _masked_tensor(model, module)
        if tuple(weight.shape) != tuple(mask.shape):
            raise ZpruneError(
                f"mask for {module} has shape {list(mask.shape)} but the model's weight is {list(weight.shape)}; "
                "the masks were made from another model"
            )
    return masks, data


def zero_masked(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Set to zero what `masks` (from checked_masks) mark, in the tensors the model holds now."""
    with torch.no_grad():
        for module, mask in masks.items():
            weight = _masked_tensor(model, module)
            weight.masked_fill_(mask.to(weight.device), 0)


def _masked_tensor(model: torch.nn.Module, module: str) -> torch.Tensor:
    """A Linear's weight, or a parameter by its own name (MoE experts fused into one [experts, out, in] tensor)."""
    try:
        return model.get_submodule(module).weight
    except AttributeError:
        pass
    try:
        return model.get_parameter(module)
    except AttributeError:
        raise ZpruneError(f"the masks name layer {module}, which this model does not have") from None
