"""After a score method's mask: refine the mask by swaps, then give the survivors new weights.

Both read the layer's Gram matrix. Reconstructions by name: "obs" (SparseGPT's column walk with the
mask held fixed, methods/obs.py) and "pcg" (the exact least-squares weights on the mask,
methods/pcg.py). Refinement: `rounds` of 1-swaps per row (methods/swaps.py).
"""

from __future__ import annotations

import torch

from zprune_cli.masks import Pattern
from zprune_cli.methods.obs import reconstruct as reconstruct_obs
from zprune_cli.methods.pcg import reconstruct_pcg
from zprune_cli.methods.swaps import refine_swaps

RECONSTRUCT = {"obs": reconstruct_obs, "pcg": reconstruct_pcg}


def finish_mask(weight: torch.Tensor, hessian: torch.Tensor, prune_mask: torch.Tensor, pattern: Pattern,
                swap_rounds: int, reconstruct: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned weight [out, in] in the input dtype, final mask) for a method's mask (True = pruned): the
    mask refined by `swap_rounds` rounds of swaps when > 0, the weight reconstructed on it unless
    `reconstruct` is "none"."""
    if swap_rounds > 0:
        prune_mask, _ = refine_swaps(weight, hessian, prune_mask, pattern, swap_rounds)
    if reconstruct == "none":
        return weight.masked_fill(prune_mask.to(weight.device), 0), prune_mask
    return RECONSTRUCT[reconstruct](weight, hessian, prune_mask), prune_mask
