"""OWL, Outlier Weighed Layerwise sparsity (Yin et al., 2024): blocks with more outlier scores keep
more weights, and the model as a whole keeps the requested sparsity.

For each decoder block l, D_l = the share of its Wanda scores above M * mean (M = 5). The shares are
rescaled to D~ in [0, 2 lambda] (lambda = 0.08) and block l is pruned at s - (D~_l - mean D~).
"""

from __future__ import annotations

import math

from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.base.lazy import lazy
from zprune_cli.methods import owl_scorer
from zprune_cli.methods.base import prune_precision
from zprune_cli.models.blocks import weight_view

torch = lazy("torch")


def outlier_fraction(scores: list[torch.Tensor], M: float = 5.0) -> float:
    """Share (0..1) of one block's Wanda scores that exceed M times their mean.

    scores: the Wanda score matrices ([out, in] each) of every Linear layer of the block. As in the
    OWL reference code, the block's scores are pooled: one mean over all of them, one count over all
    of them. (The reference returns a percentage; the rescaling in owl_sparsities cancels the factor.)
    Pooling mixes input groups fairly because every layer of a block saw the same tokens.
    """
    if not scores:
        raise ValueError("outlier_fraction needs at least one score matrix")
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.sum(dtype=torch.float64)) for s in scores) / total  # float64: millions of terms
    threshold = M * mean
    above = sum(int((s > threshold).sum()) for s in scores)
    return above / total


def block_outlier_fraction(linears: dict, stats: dict, M: float) -> float:
    """outlier_fraction of one block from its projections {name: Linear or Conv1D} and statistics {name: LayerStats}."""
    score = owl_scorer().score  # the registry's: Wanda's |W_ij| * ||X_j||
    scores = [score(weight_view(linear).to(prune_precision()), stats[name]) for name, linear in linears.items()]
    return outlier_fraction(scores, M)


def owl_sparsities(outlier_fractions: list[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """Per-block sparsities whose mean is exactly `sparsity`; a higher outlier share gives a lower one.

    D~ = (D - min D) / (max D - min D) * 2 lam, sparsity_l = s - (D~_l - mean D~). Equal shares (or a
    single block) give every block s. If that would put a block outside [0, 1), all deviations from s
    are shrunk by the same factor (the largest that fits), which keeps the mean at s and the order.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ZpruneUsageError(f"sparsity must be in [0, 1), got {sparsity}")
    if not lam >= 0:
        raise ZpruneUsageError(f"OWL lambda must be >= 0, got {lam}")
    D = [float(d) for d in outlier_fractions]
    if not all(math.isfinite(d) for d in D):
        raise ValueError(f"outlier fractions must be finite, got {D}")
    spread = max(D, default=0.0) - min(D, default=0.0)
    if spread == 0:
        return [sparsity] * len(D)

    D_tilde = [(d - min(D)) / spread * 2 * lam for d in D]  # in [0, 2 lam]
    mean_D_tilde = sum(D_tilde) / len(D_tilde)
    deviation = [d - mean_D_tilde for d in D_tilde]  # sparsity_l = s - deviation_l

    # The largest shrink factor t <= 1 with s - t * deviation_l in [0, 1) for every block.
    t = 1.0
    if max(deviation) > 0:
        t = min(t, sparsity / max(deviation))  # the most-outlier block must stay >= 0
    if min(deviation) < 0:
        fits_below_one = (1.0 - sparsity) / -min(deviation)
        if fits_below_one <= t:
            t = fits_below_one * (1 - 1e-6)  # strictly below 1: never prune a whole block
    return [sparsity - t * dev for dev in deviation]
