"""SparseGPT (Frantar & Alistarh, 2023): prune column by column, and let an OBS update of the
surviving weights absorb each pruned weight's error.

H = (2/N) sum x x^T over the layer's inputs; dead inputs (H_jj = 0) get H_jj = 1 and their weights
zeroed; H is damped by percdamp * mean(diag H); U = upper Cholesky factor of H^-1. The columns are
walked in blocks: a pruned w_ij has error e = w_ij / U_jj, which is spread over the later columns of
row i as e * U_j,: -- first inside the block, then, in one matrix product, over all columns after it.

The mask is chosen inside the walk, in one branch (`obs._walk_block`): unstructured, at each block's
start the lowest w^2 / U_jj^2 over the whole rows x block on the already-updated weights; N:M, at every
m-th column the n lowest of the same score in each row; or a fixed mask (`reconstruct`: the mask of any
score method, kept as is).

With `quant`, the walk also rounds every kept weight to its grid as it is visited and spreads that
error with the pruning error: SparseGPT's joint sparsification and quantization (its `--wbits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy
from zprune_cli.base.masks import Pattern, check_pattern_fits, prune_count
from zprune_cli.methods.base import Cost, Method, PruneResult, option, register
from zprune_cli.methods.obs import MaskChoice, obs_flops, obs_walk
from zprune_cli.methods.quantize import ColumnQuantizer, QuantSpec, act_order, walk_blocksize
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")


@register
@dataclass
class SparseGPT(Method):
    name: ClassVar[str] = "sparsegpt"
    default_scope: ClassVar[str] = "layer"  # unused: the mask is chosen per block of columns
    needs_gram: ClassVar[bool] = True
    updates_weights: ClassVar[bool] = True
    uses_scope: ClassVar[bool] = False
    joint_quantization: ClassVar[bool] = True

    blocksize: int = option(128, 1)  # columns per block
    percdamp: float = option(0.01, 0)  # damping, as a fraction of mean(diag H)

    @classmethod
    def work_bytes(cls, weights: int, width: int) -> int:
        """The float32 weight being walked and its mask, and one [in, in] matrix: H = 2/N Gram, in whose memory
        U, the Cholesky factor of its inverse, is made on a CPU (obs.upper_cholesky_of_inverse). On other
        devices the factorisation is out of place, two more [in, in] matrices for a moment: not counted here
        (about 1 GB at Llama-2-7B's down_proj, small beside a GPU's memory), so a GPU estimate is that much low."""
        return weights * (4 + 1) + width * width * 4

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
        quant: QuantSpec | None = None,
    ) -> PruneResult:
        """Choose the mask while walking the columns; `scope` does not apply (the choice is per block).
        With `quant`, quantize in the same walk (act-order only for unstructured: an N:M group is chosen
        over m consecutive columns as the walk reaches them)."""
        if stats.gram is None:
            raise ZpruneError("sparsegpt needs the Gram matrix of each layer's inputs; calibrate with Gram matrices")
        if pattern.is_nm:
            check_pattern_fits(weight.shape[1], pattern)
            choice = MaskChoice(pattern=pattern)
        else:
            prune_count(sparsity, 1)  # refuses a sparsity outside [0, 1] before any work
            choice = MaskChoice(sparsity=sparsity)
        # N:M groups (and grids fitted during the walk) must not straddle two blocks
        blocksize = walk_blocksize(self.blocksize, quant, pattern.m)
        quantizer = order = None
        if quant is not None:
            if quant.act_order and pattern.is_nm:
                raise ZpruneError("sparsegpt cannot walk an N:M pattern in act-order")
            order = act_order(stats.hessian_diagonal()).to(weight.device) if quant.act_order else None
            quantizer = ColumnQuantizer(quant, *weight.shape, order)
        W, prune_mask = obs_walk(weight, stats.hessian, choice, blocksize, self.percdamp, quantizer, order)
        grid = quantizer.grid() if quantizer is not None else None
        return PruneResult(weight=W.to(weight.dtype), prune_mask=prune_mask, grid=grid)
