"""The pruning methods: each score equals its paper's formula, written out here independently."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.masks import Pattern, prune_count
from zprune_cli.base.sparsity import check_nm
from conftest import score_methods
from zprune_cli.methods import METHODS, Method, PruneResult, get_method, method_names, register
from zprune_cli.methods.obs import reconstruct
from zprune_cli.stats.types import LayerStats

SCORE_METHODS = score_methods()


def random_case(out: int = 12, inp: int = 20, seed: int = 0) -> tuple[torch.Tensor, LayerStats]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g)
    sumsq = torch.rand(inp, generator=g, dtype=torch.float64) * 50 + 0.1
    return W, LayerStats(sumsq=sumsq, n_tokens=64)


def stats_from_inputs(X: torch.Tensor, gram: bool = False) -> LayerStats:
    """X: [tokens, in]."""
    X64 = X.to(torch.float64)
    return LayerStats(
        sumsq=(X64**2).sum(dim=0),
        n_tokens=X.shape[0],
        gram=(X64.T @ X64).float() if gram else None,
    )


def realistic_layer(out: int = 64, inp: int = 128, tokens: int = 2048, seed: int = 0):
    """Correlated inputs (16 latent factors plus noise) with four large-magnitude outlier channels."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, 16, generator=g)
    X = latent @ torch.randn(16, inp, generator=g) + 0.3 * torch.randn(tokens, inp, generator=g)
    X[:, [c * inp // 4 + 1 for c in range(4)]] *= 20.0
    W = torch.randn(out, inp, generator=g) * 0.02
    return W, X, stats_from_inputs(X, gram=True)


def output_error(W: torch.Tensor, W_pruned: torch.Tensor, X: torch.Tensor) -> float:
    """||W X - W' X|| over the calibration tokens."""
    return float(torch.linalg.norm(X @ (W - W_pruned.float()).T))


# --- registry ------------------------------------------------------------------------------------


def test_registry_names() -> None:
    # every method module registers exactly the name it declares; adding a method is adding one file
    import re

    declared = set()
    for path in (Path(__file__).resolve().parents[1] / "zprune_cli" / "methods").glob("*.py"):
        declared |= set(re.findall(r'name: ClassVar\[str\] = "(\w+)"', path.read_text()))
    assert method_names() == sorted(declared)
    assert set(METHODS) == set(method_names())
    for name in method_names():
        method = get_method(name)
        assert isinstance(method, Method) and method.name == name
        assert method.default_scope in ("row", "layer")
    assert get_method("sparsegpt").needs_gram and get_method("sparsegpt").updates_weights
    assert not any(get_method(n).needs_gram or get_method(n).updates_weights for n in SCORE_METHODS)
    assert SCORE_METHODS and {"magnitude", "wanda", "ria", "zpruner"} <= set(SCORE_METHODS)
    assert get_method("wanda").default_scope == "row" and get_method("ria").default_scope == "layer"


def test_unknown_method_lists_known_names_sorted() -> None:
    with pytest.raises(ZpruneUsageError, match=", ".join(method_names())):
        get_method("obs")


def test_method_options() -> None:
    assert get_method("ria", a=0.25).a == 0.25
    sgpt = get_method("sparsegpt", blocksize=64, percdamp=0.1)
    assert (sgpt.blocksize, sgpt.percdamp) == (64, 0.1)
    with pytest.raises(ZpruneUsageError, match="no option b"):
        get_method("ria", b=1)
    with pytest.raises(ZpruneUsageError, match="no option"):
        get_method("wanda", a=0.5)
    with pytest.raises(ZpruneUsageError, match="blocksize"):
        get_method("sparsegpt", blocksize=0)
    with pytest.raises(ZpruneUsageError, match="percdamp"):
        get_method("sparsegpt", percdamp=-0.01)
    with pytest.raises(ZpruneUsageError, match="ria option a"):
        get_method("ria", a="x")


def test_adding_a_method_is_one_registered_class() -> None:
    @register
    class Negative(Method):
        name = "test-negative"
        default_scope = "row"

        def score(self, weight_fp32, stats):
            return -weight_fp32.abs()

    try:
        result = get_method("test-negative").prune(torch.tensor([[1.0, -3.0, 2.0, 0.5]]), None, 0.5, Pattern())
        assert result.weight.tolist() == [[1.0, 0.0, 0.0, 0.5]]
    finally:
        del METHODS["test-negative"]


# --- scores equal the formulas -------------------------------------------------------------------


def test_magnitude_score() -> None:
    W, stats = random_case()
    assert torch.equal(get_method("magnitude").score(W, stats), W.abs())


def test_wanda_score() -> None:
    W, stats = random_case()
    expected = torch.empty_like(W)
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            expected[i, j] = abs(W[i, j]) * float(stats.sumsq[j]) ** 0.5
    torch.testing.assert_close(get_method("wanda").score(W, stats), expected)


@pytest.mark.parametrize("a", [0.5, 0.3, 1.0])
def test_ria_score(a: float) -> None:
    W, stats = random_case(seed=1)
    Wn = W.double().numpy()
    norm = np.sqrt(stats.sumsq.numpy())
    expected = np.empty_like(Wn)
    for i in range(Wn.shape[0]):
        for j in range(Wn.shape[1]):
            column = sum(abs(Wn[k, j]) for k in range(Wn.shape[0]))
            row = sum(abs(Wn[i, k]) for k in range(Wn.shape[1]))
            expected[i, j] = (abs(Wn[i, j]) / column + abs(Wn[i, j]) / row) * norm[j] ** a
    scores = get_method("ria", a=a).score(W, stats)
    torch.testing.assert_close(scores.double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-6)


def zpruner_reference(W: torch.Tensor, sumsq: torch.Tensor) -> torch.Tensor:
    """DESIGN section 4, in float64 numpy."""
    W = W.double().numpy()
    R = W / np.sqrt((W**2).sum(axis=1))[:, None]
    C = W / np.sqrt((W**2).sum(axis=0))[None, :]
    z_R = (R - R.mean()) / R.std(ddof=1)
    z_C = (C - C.mean()) / C.std(ddof=1)
    f = np.mean(np.abs(W) < 0.1 * np.abs(W).mean())
    alpha = 0.7 * (1 - 0.3 * f)
    x_norm = np.sqrt(sumsq.numpy())
    return torch.from_numpy((alpha * np.abs(z_R) ** 3 + (1 - alpha) * np.abs(z_C) ** 3) * x_norm[None, :] ** 1.5)


def test_zpruner_score() -> None:
    W, stats = random_case(seed=2)
    W[W.abs() < 0.3] *= 0.01  # make f (share of near-zero weights) clearly non-zero
    f = float((W.abs() < 0.1 * W.abs().mean()).float().mean())
    assert 0.05 < f < 0.5
    scores = get_method("zpruner").score(W, stats)
    torch.testing.assert_close(scores.double(), zpruner_reference(W, stats.sumsq), rtol=1e-4, atol=1e-6)


# --- prune() through the base class --------------------------------------------------------------


@pytest.mark.parametrize("name", SCORE_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_score_method_prune_result(name: str, dtype: torch.dtype) -> None:
    W, stats = random_case(out=16, inp=32, seed=3)
    W = W.to(dtype)
    method = get_method(name)
    result = method.prune(W, stats, 0.5, Pattern())
    assert isinstance(result, PruneResult)
    assert result.weight.dtype == dtype and result.prune_mask.dtype == torch.bool
    assert (result.weight[result.prune_mask] == 0).all()
    assert torch.equal(result.weight[~result.prune_mask], W[~result.prune_mask])
    if method.default_scope == "row":
        assert (result.prune_mask.sum(dim=1) == 16).all()
    assert int(result.prune_mask.sum()) == prune_count(0.5, 16 * 32)
    # The mask is the lowest fp32 scores.
    scores = method.score(W.float(), stats)
    if method.default_scope == "layer":
        assert scores[result.prune_mask].max() <= scores[~result.prune_mask].min()

    nm = method.prune(W, stats, 0.5, Pattern(2, 4))
    assert check_nm(nm.prune_mask, 2, 4) and (nm.weight[nm.prune_mask] == 0).all()
    with pytest.raises(ZpruneUsageError, match="multiple of 8"):
        method.prune(W[:, :28], LayerStats(stats.sumsq[:28], 64), 0.5, Pattern(4, 8))


def test_scope_override() -> None:
    W, stats = random_case(out=8, inp=16, seed=4)
    W[0] *= 0.01  # row 0 is tiny: a per-layer choice takes nearly all of it
    per_layer = get_method("wanda").prune(W, stats, 0.5, Pattern(), scope="layer").prune_mask
    per_row = get_method("wanda").prune(W, stats, 0.5, Pattern()).prune_mask
    assert int(per_layer.sum()) == int(per_row.sum()) == 64
    assert (per_row.sum(dim=1) == 8).all()
    assert int(per_layer[0].sum()) == 16


def test_wanda_hand_case() -> None:
    """Which weights survive, worked out by hand; |W| alone or ||X_j||^2 would keep other ones.

    Column norms ||X_j|| = (4, 1, 3, 1). Scores |W|*||X||:  row 0: 4, 5, 6, 3 -> keep columns 1, 2
    (with ||X||^2: 16, 5, 18, 3 -> keep 0, 2; with |W|: 1, 5, 2, 3 -> keep 1, 3).  Row 1: 8, 3, 1.5,
    2.5 -> keep 0, 1 (with ||X||^2: 32, 3, 4.5, 2.5 -> keep 0, 2; with |W|: 2, 3, .5, 2.5 -> keep 1, 3).
    """
    W = torch.tensor([[1.0, -5.0, 2.0, -3.0], [2.0, -3.0, 0.5, -2.5]])
    X = torch.tensor([[4.0, 1.0, 0.0, 1.0], [0.0, 0.0, 3.0, 0.0]])  # [tokens, in]
    result = get_method("wanda").prune(W, stats_from_inputs(X), 0.5, Pattern())
    assert result.weight.tolist() == [[0.0, -5.0, 2.0, 0.0], [2.0, -3.0, 0.0, 0.0]]
    magnitude = get_method("magnitude").prune(W, None, 0.5, Pattern(), scope="row")
    assert not torch.equal(magnitude.prune_mask, result.prune_mask)


# --- Z-Pruner guards -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_zpruner_finite_with_degenerate_inputs(dtype: torch.dtype) -> None:
    W, stats = random_case(out=16, inp=32, seed=5)
    W[3] = 0  # zero row
    W[:, 7] = 0  # zero column
    stats.sumsq[11] = 0  # dead input channel
    W = W.to(dtype)
    method = get_method("zpruner")
    scores = method.score(W.float(), stats)
    assert torch.isfinite(scores).all()
    assert (scores[:, 11] == 0).all()  # a dead channel scores 0 and goes first
    result = method.prune(W, stats, 0.5, Pattern())
    assert result.weight.dtype == dtype and torch.isfinite(result.weight.float()).all()
    assert int(result.prune_mask.sum()) == 256 and result.prune_mask[:, 11].all()


@pytest.mark.parametrize("W", [torch.zeros(4, 8), torch.full((4, 8), 0.5), torch.ones(1, 1)])
def test_zpruner_finite_when_std_is_zero(W: torch.Tensor) -> None:
    stats = LayerStats(sumsq=torch.ones(W.shape[1], dtype=torch.float64), n_tokens=4)
    assert torch.isfinite(get_method("zpruner").score(W, stats)).all()


def test_ria_guards_zero_sums() -> None:
    W, stats = random_case(out=6, inp=8, seed=6)
    W[2] = 0
    W[:, 5] = 0
    assert torch.isfinite(get_method("ria").score(W, stats)).all()


# --- SparseGPT and reconstruction ----------------------------------------------------------------


def test_sparsegpt_beats_wanda_and_magnitude() -> None:
    W, X, stats = realistic_layer()
    errors = {}
    for name in ["sparsegpt", "wanda", "magnitude"]:
        result = get_method(name).prune(W, stats, 0.5, Pattern())
        assert int(result.prune_mask.sum()) == 64 * 128 // 2
        assert (result.weight[result.prune_mask] == 0).all()
        errors[name] = output_error(W, result.weight, X)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_sparsegpt_nm_and_block_alignment() -> None:
    W, X, stats = realistic_layer(out=16, inp=64, tokens=512, seed=1)
    # blocksize 10 is not a multiple of 4: groups must still be aligned to the columns 0-3, 4-7, ...
    result = get_method("sparsegpt", blocksize=10).prune(W, stats, 0.5, Pattern(2, 4))
    assert check_nm(result.prune_mask, 2, 4)
    assert (result.weight[result.prune_mask] == 0).all()
    wanda = get_method("wanda").prune(W, stats, 0.5, Pattern(2, 4))
    assert output_error(W, result.weight, X) < output_error(W, wanda.weight, X)
    with pytest.raises(ZpruneUsageError, match="multiple of 8"):
        get_method("sparsegpt").prune(W[:, :60], stats_from_inputs(X[:, :60], gram=True), 0.5, Pattern(4, 8))


def test_sparsegpt_unstructured_count_per_block() -> None:
    W, X, stats = realistic_layer(out=8, inp=48, tokens=256, seed=2)
    result = get_method("sparsegpt", blocksize=16).prune(W, stats, 0.3, Pattern())
    per_block = result.prune_mask.reshape(8, 3, 16).sum(dim=(0, 2))
    assert per_block.tolist() == [prune_count(0.3, 8 * 16)] * 3


def test_sparsegpt_equals_reconstruct_with_its_own_mask() -> None:
    """One column walk: replaying SparseGPT's mask through `reconstruct` gives the same weights."""
    W, X, stats = realistic_layer(out=16, inp=96, tokens=512, seed=3)
    result = get_method("sparsegpt", blocksize=32).prune(W, stats, 0.5, Pattern())
    replay = reconstruct(W, stats.hessian(), result.prune_mask, blocksize=32)
    torch.testing.assert_close(replay, result.weight, rtol=1e-5, atol=1e-6)


def test_reconstruct_matches_least_squares() -> None:
    """If every row prunes the first p columns, the column walk gives the least-squares optimum:
    w'_F = w_F + w_P H_PF H_FF^-1 (rows), across block boundaries too."""
    W, X, stats = realistic_layer(out=3, inp=12, tokens=400, seed=4)
    p = 5
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask[:, :p] = True
    H = stats.hessian().double()
    expected = W.double().clone()
    expected[:, :p] = 0
    expected[:, p:] += W[:, :p].double() @ H[:p, p:] @ torch.linalg.inv(H[p:, p:])
    got = reconstruct(W, stats.hessian(), mask, blocksize=4, percdamp=0.0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=1e-5)


def test_reconstruct_improves_zpruner_and_keeps_its_zeros() -> None:
    W, X, stats = realistic_layer()
    zp = get_method("zpruner").prune(W, stats, 0.5, Pattern())
    rebuilt = reconstruct(W, stats.hessian(), zp.prune_mask)
    assert torch.equal(rebuilt == 0, zp.prune_mask)  # exactly the mask's zeros, no more, no fewer
    assert output_error(W, rebuilt, X) < 0.9 * output_error(W, zp.weight, X)

    half = reconstruct(W.to(torch.bfloat16), stats.hessian(), zp.prune_mask)
    assert half.dtype == torch.bfloat16 and torch.equal(half == 0, zp.prune_mask)


def test_sparsegpt_singular_hessian() -> None:
    """Duplicate and dead input channels make H singular; default damping copes."""
    W, X, _ = realistic_layer(out=16, inp=64, tokens=512, seed=5)
    X[:, 10] = X[:, 9]  # duplicate channel
    X[:, 20] = 0  # dead channel
    stats = stats_from_inputs(X, gram=True)
    for dtype in [torch.float32, torch.float16]:
        result = get_method("sparsegpt").prune(W.to(dtype), stats, 0.5, Pattern())
        assert result.weight.dtype == dtype and torch.isfinite(result.weight.float()).all()
        assert int(result.prune_mask.sum()) == 16 * 64 // 2
        assert (result.weight[result.prune_mask] == 0).all()
        assert (result.weight[:, 20] == 0).all()  # dead input: weights zeroed, as in SparseGPT


def test_sparsegpt_damping_retry_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A rank-1 Gram with percdamp=0: the Cholesky pivot after the first is exactly 0, so the first
    factorisation must fail; the damping then grows and the warning says so."""
    v = torch.arange(1.0, 17.0)
    stats = LayerStats(sumsq=v.double() ** 2, n_tokens=2, gram=torch.outer(v, v))  # 2/N = 1: exact
    assert torch.linalg.cholesky_ex(stats.hessian()).info.item() != 0
    W = torch.randn(8, 16, generator=torch.Generator().manual_seed(6))
    with caplog.at_level(logging.WARNING, logger="zprune"):
        result = get_method("sparsegpt", percdamp=0.0).prune(W, stats, 0.5, Pattern())
    assert any("Cholesky" in record.getMessage() for record in caplog.records)
    assert torch.isfinite(result.weight).all() and int(result.prune_mask.sum()) == 64


def test_sparsegpt_needs_gram() -> None:
    W, stats = random_case()
    with pytest.raises(ZpruneError, match="Gram"):
        get_method("sparsegpt").prune(W, stats, 0.5, Pattern())


def test_sparsegpt_broken_statistics_fail_clearly() -> None:
    gram = torch.eye(8)
    gram[0, 1] = gram[1, 0] = float("nan")
    stats = LayerStats(sumsq=torch.ones(8, dtype=torch.float64), n_tokens=2, gram=gram)
    with pytest.raises(ZpruneError, match="could not be factorised"):
        get_method("sparsegpt").prune(torch.randn(4, 8), stats, 0.5, Pattern())
