"""Z-Pruner (Bhuiyan et al., 2025): z-scores of row- and column-normalised weights, times activations.

R = W / ||W_i,:||_2 and C = W / ||W_:,j||_2 (signed); z_R, z_C are their z-scores over the whole
matrix; alpha = 0.7 * (1 - 0.3 f) with f the share of |W_ij| below 0.1 * mean|W|;
S_ij = (alpha |z_R|^3 + (1 - alpha) |z_C|^3) * ||X_j||_2 ** 1.5, compared over the whole matrix.
A zero row or column, a constant matrix (std 0) or a dead input channel gives finite scores.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from zprune_cli.methods.base import Method, input_norms, register, safe_divisor
from zprune_cli.stats.types import LayerStats


def z_score(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over all entries (std with Bessel's correction, like torch.std); 0 where std = 0."""
    std = x.std() if x.numel() > 1 else x.new_zeros(())
    return (x - x.mean()) / safe_divisor(std)


@register
class ZPruner(Method):
    name: ClassVar[str] = "zpruner"
    default_scope: ClassVar[str] = "layer"

    def score(self, weight_fp32: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        W = weight_fp32  # [out, in]
        R = W / safe_divisor(W.norm(dim=1, keepdim=True))  # [out, in], each row divided by its norm
        C = W / safe_divisor(W.norm(dim=0, keepdim=True))  # [out, in], each column divided by its norm
        z_R, z_C = z_score(R), z_score(C)
        f = (W.abs() < 0.1 * W.abs().mean()).float().mean()  # share of near-zero weights
        alpha = 0.7 * (1 - 0.3 * f)
        deviation = alpha * z_R.abs().pow(3) + (1 - alpha) * z_C.abs().pow(3)  # [out, in]
        return deviation * input_norms(stats, W).pow(1.5)
