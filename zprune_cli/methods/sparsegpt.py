"""SparseGPT (Frantar & Alistarh, 2023): prune column by column, and let an OBS update of the
surviving weights absorb each pruned weight's error.

H = (2/N) sum x x^T over the layer's inputs; dead inputs (H_jj = 0) get H_jj = 1 and their weights
zeroed; H is damped by percdamp * mean(diag H); U = upper Cholesky factor of H^-1. The columns are
walked in blocks: a pruned w_ij has error e = w_ij / U_jj, which is spread over the later columns of
row i as e * U_j,: -- first inside the block, then, in one matrix product, over all columns after it.

The walk is shared by three mask choosers: unstructured (per block, the lowest w^2 / U_jj^2 over the
whole rows x block on the already-updated weights), N:M (per group of m columns, the n lowest of the
same score in each row) and a fixed mask (`reconstruct`: the mask of any score method, kept as is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from zprune_cli.errors import ZpruneError
from zprune_cli.masks import Pattern, check_pattern_fits, prune_count
from zprune_cli.methods.base import Cost, Method, PruneResult, number_option, register
from zprune_cli.methods.obs import check_options, nm_chooser, obs_flops, obs_walk, unstructured_chooser
from zprune_cli.stats.types import LayerStats


@register
@dataclass
class SparseGPT(Method):
    name: ClassVar[str] = "sparsegpt"
    default_scope: ClassVar[str] = "layer"  # unused: the mask is chosen per block of columns
    needs_gram: ClassVar[bool] = True
    updates_weights: ClassVar[bool] = True
    uses_scope: ClassVar[bool] = False

    blocksize: int = 128  # columns per block
    percdamp: float = 0.01  # damping, as a fraction of mean(diag H)

    @classmethod
    def work_bytes(cls, weights: int, width: int) -> int:
        """The float32 weight being walked and its mask, and [in, in] matrices: H = 2/N Gram, and at most two
        beside it while U, the Cholesky factor of its inverse, is made (obs.upper_cholesky_of_inverse)."""
        return weights * (4 + 1) + 3 * width * width * 4

    def __post_init__(self) -> None:
        self.blocksize = number_option(self.name, "blocksize", self.blocksize, int)
        self.percdamp = number_option(self.name, "percdamp", self.percdamp)
        check_options(self.blocksize, self.percdamp)

    def cost(self, out: int, width: int) -> Cost:
        """The column walk (obs_flops); each block's mask is chosen once over its columns."""
        return Cost(obs_flops(out, width, self.blocksize), float(out * width))

    def prune(
        self,
        weight: torch.Tensor,
        stats: LayerStats,
        sparsity: float,
        pattern: Pattern,
        scope: str | None = None,
    ) -> PruneResult:
        """Choose the mask while walking the columns; `scope` does not apply (the choice is per block)."""
        if stats.gram is None:
            raise ZpruneError("sparsegpt needs the Gram matrix of each layer's inputs; calibrate with Gram matrices")
        blocksize = self.blocksize
        if pattern.is_nm:
            check_pattern_fits(weight.shape[1], pattern)
            # N:M groups must not straddle two blocks: use a whole number of groups per block.
            blocksize = max(pattern.m, blocksize - blocksize % pattern.m)
            choose = nm_chooser(pattern)
        else:
            prune_count(sparsity, 1)  # refuses a sparsity outside [0, 1] before any work
            choose = unstructured_chooser(sparsity)
        W, prune_mask = obs_walk(weight, stats.hessian(), choose, blocksize, self.percdamp)
        return PruneResult(weight=W.to(weight.dtype), prune_mask=prune_mask)
