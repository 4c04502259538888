"""Scores -> mask: patterns, scopes, exact counts under ties."""

from __future__ import annotations

import pytest
import torch

from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.base.masks import Pattern, prune_count, select_prune_mask
from zprune_cli.base.sparsity import check_nm


def tied_scores(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Scores from only three values, so almost every entry is tied with many others."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (rows, cols), generator=g).float()


# --- Pattern -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, pattern, shown",
    [
        ("unstructured", Pattern(), "unstructured"),
        ("  Unstructured ", Pattern(), "unstructured"),
        ("2:4", Pattern(2, 4), "2:4"),
        ("4:8", Pattern(4, 8), "4:8"),
        (" 1 : 4 ", Pattern(1, 4), "1:4"),
    ],
)
def test_pattern_parse(text: str, pattern: Pattern, shown: str) -> None:
    parsed = Pattern.parse(text)
    assert parsed == pattern
    assert str(parsed) == shown
    assert parsed.is_nm == (shown != "unstructured")
    assert Pattern.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["", "dense", "2-4", "2:", ":4", "4:4", "5:4", "0:4", "0:0", "-1:4", "2:4:8", "a:b"])
def test_pattern_parse_rejects(text: str) -> None:
    with pytest.raises(ZpruneUsageError, match="pattern"):
        Pattern.parse(text)


def test_pattern_constructor_rejects_invalid() -> None:
    with pytest.raises(ZpruneUsageError):
        Pattern(3, 2)
    with pytest.raises(ZpruneUsageError):
        Pattern(0, 4)
    assert not Pattern().is_nm


# --- unstructured --------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.29, 1.0])
def test_row_scope_prunes_exactly_k_per_row_with_ties(sparsity: float) -> None:
    scores = tied_scores(16, 100)
    mask = select_prune_mask(scores, sparsity, "row", Pattern())
    k = prune_count(sparsity, 100)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert (mask.sum(dim=1) == k).all()
    # The pruned entries are the lowest of their row.
    for row_scores, row_mask in zip(scores, mask):
        if 0 < k < 100:
            assert row_scores[row_mask].max() <= row_scores[~row_mask].min()


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.61, 0.9])
def test_layer_scope_prunes_exactly_k_of_the_matrix_with_ties(sparsity: float) -> None:
    scores = tied_scores(12, 40, seed=1)
    mask = select_prune_mask(scores, sparsity, "layer", Pattern())
    assert int(mask.sum()) == prune_count(sparsity, 12 * 40)
    if mask.any():
        assert scores[mask].max() <= scores[~mask].min()


def test_all_scores_tied_still_exact() -> None:
    scores = torch.ones(8, 10)
    assert int(select_prune_mask(scores, 0.5, "layer", Pattern()).sum()) == 40
    assert (select_prune_mask(scores, 0.5, "row", Pattern()).sum(dim=1) == 5).all()


def test_layer_scope_differs_from_row_scope() -> None:
    # Row 0 has all the small scores: per layer it loses everything, per row only half.
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    layer = select_prune_mask(scores, 0.5, "layer", Pattern())
    row = select_prune_mask(scores, 0.5, "row", Pattern())
    assert layer.tolist() == [[True, True, True, True], [False, False, False, False]]
    assert row.tolist() == [[True, True, False, False], [True, True, False, False]]


def test_prune_count_reads_decimal_sparsity() -> None:
    assert 0.29 * 100 < 29  # binary floating point
    assert prune_count(0.29, 100) == 29
    assert prune_count(0.5, 7) == 3
    assert prune_count(0.999, 100) == 99


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, float("nan")])
def test_bad_sparsity_rejected(sparsity: float) -> None:
    with pytest.raises(ZpruneUsageError, match="sparsity"):
        select_prune_mask(torch.rand(4, 8), sparsity, "row", Pattern())


def test_bad_scope_rejected() -> None:
    with pytest.raises(ZpruneUsageError, match="scope"):
        select_prune_mask(torch.rand(4, 8), 0.5, "column", Pattern())


# --- N:M -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("make_scores", [tied_scores, lambda r, c: torch.randn(r, c)])
def test_nm_prunes_exactly_n_of_every_m(n: int, m: int, make_scores) -> None:
    scores = make_scores(16, 64)
    # sparsity and scope are ignored by an N:M pattern
    mask = select_prune_mask(scores, 0.9, "layer", Pattern(n, m))
    assert check_nm(mask, n, m)
    assert int(mask.sum()) == 16 * 64 * n // m
    groups_s = scores.reshape(16, 64 // m, m)
    groups_m = mask.reshape(16, 64 // m, m)
    pruned_max = torch.where(groups_m, groups_s, torch.full_like(groups_s, -torch.inf)).amax(-1)
    kept_min = torch.where(groups_m, torch.full_like(groups_s, torch.inf), groups_s).amin(-1)
    assert (pruned_max <= kept_min).all()


def test_nm_hand_case() -> None:
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 8.0, 7.0]])
    mask = select_prune_mask(scores, 0.0, "row", Pattern(2, 4))
    assert mask.tolist() == [[False, True, False, True, True, False, False, True]]


def test_nm_width_not_divisible() -> None:
    with pytest.raises(ZpruneUsageError, match=r"2:4.*multiple of 4.*\b6\b"):
        select_prune_mask(torch.rand(3, 6), 0.5, "row", Pattern(2, 4))


def test_check_nm_detects_violations() -> None:
    mask = select_prune_mask(torch.randn(4, 16), 0.0, "row", Pattern(2, 4))
    assert check_nm(mask, 2, 4)
    assert not check_nm(mask, 1, 4)
    broken = mask.clone()
    broken[0, 0] = ~broken[0, 0]
    assert not check_nm(broken, 2, 4)
    # Right total but one group with 3 and one with 1.
    uneven = torch.zeros(1, 8, dtype=torch.bool)
    uneven[0, [0, 1, 2, 4]] = True
    assert int(uneven.sum()) == 4 and not check_nm(uneven, 2, 4)
    assert not check_nm(torch.zeros(1, 6, dtype=torch.bool), 2, 4)  # width not a multiple of m


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (3, 4), (1, 8), (7, 8), (5, 16)])
def test_nm_in_bands_of_rows_is_the_whole_matrix_s_mask(n, m, monkeypatch) -> None:
    """lowest_n_of_m works in bands of rows that stay in cache: the same mask as topk's over the whole matrix, with
    ties at a cut in some bands (those take topk) and none in others; kept_score in bands is the direct sum."""
    from zprune_cli.base import masks
    from zprune_cli.methods.permutation import kept_score

    g = torch.Generator().manual_seed(n * 10 + m)
    scores = torch.rand(37, 64 * m, generator=g)
    scores[5:9] = torch.randint(0, 3, (4, 64 * m), generator=g).float()  # quantized: ties at the cuts in these rows
    groups = scores.reshape(37, 64, m)
    want = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, dim=-1, largest=False).indices, True)
    monkeypatch.setattr(masks, "BAND_BYTES", 4 * 64 * m * 6)  # bands of 6 rows: 7 bands, the last of 1
    banded = masks.lowest_n_of_m(scores, n, m)
    assert torch.equal(banded, want.reshape(37, 64 * m))
    monkeypatch.setattr(masks, "BAND_BYTES", 2**30)
    assert torch.equal(masks.lowest_n_of_m(scores, n, m), banded)
    direct = float(groups.topk(m - n, dim=-1).values.double().sum())
    monkeypatch.setattr("zprune_cli.methods.permutation.BAND_BYTES", 4 * 64 * m * 6)
    assert kept_score(scores, Pattern(n, m)) == pytest.approx(direct, rel=1e-12)


def test_nm_ties_take_topk_for_their_own_groups_only(monkeypatch) -> None:
    """Magnitude on bfloat16 weights ties at some group's cut in nearly every band of rows: topk then sees those
    groups alone (a few in a thousand), not whole bands, and the mask is still topk's over the whole matrix."""
    from zprune_cli.base import masks

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 4096, generator=g).bfloat16().float().abs()  # |W| of bfloat16 weights
    groups = scores.reshape(64, -1, 4)
    want = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1, largest=False).indices, True)
    ordered = groups.sort(dim=-1).values
    tied = int((ordered[..., 1] == ordered[..., 2]).sum())
    seen = []
    topk = masks._topk_n_of_m
    monkeypatch.setattr(masks, "_topk_n_of_m", lambda grouped, n: (seen.append(grouped.shape[:-1].numel()), topk(grouped, n))[1])
    monkeypatch.setattr(masks, "BAND_BYTES", 4 * 4096 * 4)  # bands of 4 rows: 16 bands, each with tied groups
    assert torch.equal(masks.lowest_n_of_m(scores, 2, 4), want.reshape(64, 4096))
    assert len(seen) == 16 and 0 < sum(seen) == tied < groups.shape[0] * groups.shape[1] / 100
