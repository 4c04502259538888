"""After a score method's mask: refine the mask by swaps, then give the survivors new weights.

Both read the layer's Gram matrix. Reconstructions by name: "obs" (SparseGPT's column walk with the
mask held fixed, methods/obs.py) and "pcg" (the exact least-squares weights on the mask,
methods/pcg.py). Refinement: `rounds` of 1-swaps per row (methods/swaps.py).
"""

from __future__ import annotations

from zprune_cli.base.lazy import lazy
from zprune_cli.base.masks import Pattern
from zprune_cli.methods.base import Cost
from zprune_cli.methods.obs import obs_flops
from zprune_cli.methods.obs import reconstruct as reconstruct_obs
from zprune_cli.methods.pcg import PCG_MAX_ITER, reconstruct_pcg
from zprune_cli.methods.swaps import refine_swaps

torch = lazy("torch")

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


def finish_cost(out: int, width: int, swap_rounds: int, reconstruct: str) -> Cost:
    """The work `finish_mask` adds to one [out, width] weight, as upper bounds: every swap round runs
    (two candidate selections over the weight each; c = (W*M) H and the final error, two products), and PCG
    its iteration cap (its stall rule stops it after 10-39 of 64 on SmolLM2); OBS walks as SparseGPT does."""
    product = 2 * out * width**2
    cost = Cost(2 * product, 2.0 * out * width * swap_rounds) if swap_rounds > 0 else Cost()
    if reconstruct == "obs":
        cost += Cost(obs_flops(out, width, 128))  # obs.reconstruct's block of columns
    elif reconstruct == "pcg":
        cost += Cost(product * (PCG_MAX_ITER + 2))
    return cost


def finish_work_bytes(weights: int, width: int, reconstruct: str, swap_rounds: int) -> int:
    """Bytes finish_mask holds beside the weight, for the dry run: the float32 H = 2/N Gram, then OBS's walked
    weight, mask and its own copy of H, factorised in place (methods/obs.py), or PCG's damped H and about six float32
    [out, in] iterates (methods/pcg.py); swaps, a float32 copy of the weight and the mask."""
    work = width * width * 4 if reconstruct != "none" or swap_rounds > 0 else 0
    if swap_rounds > 0:
        work += weights * (4 + 1)
    if reconstruct == "obs":
        work += weights * (4 + 1) + width * width * 4
    elif reconstruct == "pcg":
        work += weights * 6 * 4 + width * width * 4
    return work
