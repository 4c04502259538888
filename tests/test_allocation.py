"""OWL allocation: outlier shares per block, and per-block sparsities that average to s."""

from __future__ import annotations

import pytest
import torch

from zprune_cli.engine.allocation import outlier_fraction, owl_sparsities
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.base.masks import Pattern
from zprune_cli.methods import get_method
from zprune_cli.stats.types import LayerStats


def test_outlier_fraction_hand_case() -> None:
    # mean 2.9, 5 * mean = 14.5: only the 20 is an outlier
    scores = torch.tensor([[1.0] * 9 + [20.0]])
    assert outlier_fraction([scores]) == pytest.approx(0.1)
    assert outlier_fraction([scores], M=10.0) == pytest.approx(0.0)  # 29 > 20


def test_outlier_fraction_pools_the_block() -> None:
    """As in the OWL reference code: one mean over all of the block's scores, not one per matrix.
    Per matrix, `a` would have one outlier (1/20); pooled, the mean is 51.45 and nothing exceeds 257."""
    a = torch.tensor([[1.0] * 9 + [20.0]])
    b = torch.full((2, 5), 100.0)
    assert outlier_fraction([a, b]) == 0.0
    assert outlier_fraction([a, b], M=1.0) == pytest.approx(0.5)  # the ten 100s exceed 51.45


def test_outlier_fraction_on_wanda_scores_is_rescaling_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 64, generator=g)
    sumsq = torch.rand(64, generator=g, dtype=torch.float64)
    sumsq[[5, 9]] *= 1e4  # outlier channels
    wanda = get_method("wanda")
    sums = outlier_fraction([wanda.score(W, LayerStats(sumsq, 100))])
    means = outlier_fraction([wanda.score(W, LayerStats(sumsq / 100, 100))])
    assert sums == means > 0


def test_owl_sparsities_worked_example() -> None:
    # D~ = (D - .05) / .25 * .16 = (.032, .16, .096, 0), mean .072 -> s - (D~ - .072)
    ratios = owl_sparsities([0.1, 0.3, 0.2, 0.05], 0.5)
    assert ratios == pytest.approx([0.54, 0.412, 0.476, 0.572])
    assert sum(ratios) / 4 == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("lam", [0.04, 0.08, 0.2])
def test_owl_sparsities_mean_and_order(sparsity: float, lam: float) -> None:
    D = torch.rand(24, generator=torch.Generator().manual_seed(1)).tolist()
    ratios = owl_sparsities(D, sparsity, lam=lam)
    assert sum(ratios) / len(ratios) == pytest.approx(sparsity, abs=1e-12)
    assert max(ratios) - min(ratios) == pytest.approx(2 * lam)
    # higher outlier share -> lower sparsity, strictly
    by_outliers = [r for _, r in sorted(zip(D, ratios))]
    assert all(x > y for x, y in zip(by_outliers, by_outliers[1:]))


def test_owl_equal_fractions_give_uniform() -> None:
    assert owl_sparsities([0.02, 0.02, 0.02], 0.6) == [0.6, 0.6, 0.6]
    assert owl_sparsities([0.3], 0.5) == [0.5]
    assert owl_sparsities([], 0.5) == []


def test_owl_shrinks_into_range_keeping_the_mean() -> None:
    low = owl_sparsities([0.0, 1.0, 1.0, 1.0], 0.02)  # unshrunk: 0.14, -0.02, -0.02, -0.02
    assert min(low) >= 0 and sum(low) / 4 == pytest.approx(0.02, abs=1e-12)
    assert low == pytest.approx([0.08, 0.0, 0.0, 0.0])
    high = owl_sparsities([1.0, 0.0, 0.0, 0.0], 0.97)  # unshrunk: 0.85, 1.01, 1.01, 1.01
    assert max(high) < 1 and sum(high) / 4 == pytest.approx(0.97, abs=1e-12)
    assert high[0] < high[1]


def test_owl_rejects_bad_input() -> None:
    with pytest.raises(ZpruneUsageError, match="sparsity"):
        owl_sparsities([0.1, 0.2], 1.0)
    with pytest.raises(ZpruneUsageError, match="lambda"):
        owl_sparsities([0.1, 0.2], 0.5, lam=-0.1)


def test_owl_end_to_end_keeps_overall_sparsity() -> None:
    """Blocks of equal size pruned at OWL's ratios keep s overall; the outlier-heavy block keeps more."""
    g = torch.Generator().manual_seed(2)
    blocks = []
    for outliers in [0, 3, 12]:
        W = torch.randn(16, 64, generator=g)
        sumsq = torch.rand(64, generator=g, dtype=torch.float64) + 0.5
        sumsq[:outliers] *= 1e3
        blocks.append((W, LayerStats(sumsq, 128)))
    wanda = get_method("wanda")
    D = [outlier_fraction([wanda.score(W, stats)]) for W, stats in blocks]
    assert D[0] < D[1] < D[2]
    ratios = owl_sparsities(D, 0.5)
    pruned = [wanda.prune(W, stats, r, Pattern()).prune_mask for (W, stats), r in zip(blocks, ratios)]
    assert sum(int(m.sum()) for m in pruned) == pytest.approx(0.5 * 3 * 16 * 64, abs=3 * 16)
    assert int(pruned[2].sum()) < int(pruned[0].sum())
