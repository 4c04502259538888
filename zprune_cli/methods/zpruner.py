"""Z-Pruner (Bhuiyan et al., 2025): z-scores of row- and column-normalised weights, times activations.

R = W / ||W_i,:||_2 and C = W / ||W_:,j||_2 (signed); z_R, z_C are their z-scores over the whole
matrix; alpha = 0.7 * (1 - 0.3 f) with f the share of |W_ij| below 0.1 * mean|W|;
S_ij = (alpha |z_R|^3 + (1 - alpha) |z_C|^3) * ||X_j||_2 ** 1.5, compared over the whole matrix.
A zero row or column, a constant matrix (std 0) or a dead input channel gives finite scores.
"""

from __future__ import annotations

from typing import ClassVar

from zprune_cli.base.lazy import lazy
from zprune_cli.methods.base import Method, input_norms, register, safe_divisor
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")


def z_score(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over all entries (std with Bessel's correction, like torch.std); 0 where std = 0."""
    return z_score_(x.clone())


def z_score_(x: torch.Tensor) -> torch.Tensor:
    """z_score in place (the same operations in the same order: equal to the bit)."""
    std = x.std() if x.numel() > 1 else x.new_zeros(())
    return x.sub_(x.mean()).div_(safe_divisor(std))


@register
class ZPruner(Method):
    name: ClassVar[str] = "zpruner"
    default_scope: ClassVar[str] = "layer"

    @classmethod
    def work_bytes(cls, weights: int, width: int) -> int:
        """Scoring holds three float32 temporaries at most (then the selection's two and two masks)."""
        return weights * (3 * 4 + 2)

    def score(self, weight_fp32: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        """The formula above in place on two [out, in] temporaries (it held about six at once: 1 GB at a
        Llama-2-7B MLP matrix, 1.7 GB at 13B, and 27 s a 7B block, one thread)."""
        W = weight_fp32  # [out, in]
        absolute = W.abs()
        f = (absolute < 0.1 * absolute.mean()).float().mean()  # share of near-zero weights
        del absolute
        alpha = 0.7 * (1 - 0.3 * f)
        deviation = z_score_(W / safe_divisor(W.norm(dim=1, keepdim=True)))  # z_R: rows divided by their norm
        deviation.abs_().pow_(3).mul_(alpha)
        z_C = z_score_(W / safe_divisor(W.norm(dim=0, keepdim=True)))  # columns divided by their norm
        deviation.add_(z_C.abs_().pow_(3).mul_(1 - alpha))  # alpha |z_R|^3 + (1 - alpha) |z_C|^3
        del z_C
        return deviation.mul_(input_norms(stats, W).pow(1.5))
