"""The optimal-brain-surgeon column walk that SparseGPT introduced, shared by every method that
updates weights: SparseGPT chooses its mask during the walk, `reconstruct` walks with a fixed mask.

H = (2/N) sum x x^T over the layer's inputs; dead inputs (H_jj = 0) get H_jj = 1 and their weights
zeroed; H is damped by percdamp * mean(diag H); U = upper Cholesky factor of H^-1. The columns are
walked in blocks: a pruned w_ij has error e = w_ij / U_jj, which is spread over the later columns of
row i as e * U_j,: -- first inside the block, then, in one matrix product, over all columns after it.

With a quantizer (methods/quantize.py) the same walk is GPTQ's, joint with pruning as in SparseGPT's
reference code (`--wbits`): each kept weight is rounded to its grid where it is visited, a pruned one
is 0, and the error (w - q) / U_jj of both is spread the same way. An `order` walks the columns in
that order (GPTQ's act-order); the mask is then chosen on the columns in walk order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.lazy import lazy
from zprune_cli.base.masks import Pattern, select_prune_mask
from zprune_cli.methods.base import prune_precision
from zprune_cli.methods.quantize import ColumnQuantizer, QuantGrid, QuantSpec, act_order, walk_blocksize

torch = lazy("torch")

log = logging.getLogger("zprune")

# Damping is multiplied by 10 after each failed Cholesky factorisation, at most this many tries in all.
MAX_DAMPING_TRIES = 6
# A failed percdamp = 0 cannot be multiplied up; the retries start from this fraction instead.
FIRST_RETRY_PERCDAMP = 1e-4


@dataclass(frozen=True)
class MaskChoice:
    """How the walk's mask is chosen: `fixed` (True = pruned, [out, in] in walk order), else SparseGPT's rule on
    w^2 / U_jj^2 with the weights as updated so far: for an unstructured `sparsity`, at each block's start over
    the whole block; for an N:M `pattern`, at every m-th column, per row the n lowest of the next m columns."""

    sparsity: float = 0.0
    pattern: Pattern = field(default_factory=Pattern)
    fixed: torch.Tensor | None = None


def obs_flops(out: int, width: int, blocksize: int) -> float:
    """The walk's arithmetic on one [out, width] weight: H^-1 and its Cholesky factor (three factorisations of
    [width, width], about 4/3 width^3 together), each block's update of the columns after it (out x width^2
    summed over the blocks) and the updates inside a block (out x width x blocksize)."""
    return 4 / 3 * width**3 + out * width**2 + out * width * blocksize


def upper_cholesky_of_inverse(fresh: Callable[[], torch.Tensor], percdamp: float) -> torch.Tensor:
    """U with U^T U = (H + damp I)^-1, damp = percdamp * mean(diag H), H [in, in] from `fresh()`: a matrix of the
    caller's own, which this overwrites (U is returned in its memory on a CPU). If a factorisation fails, the
    damping grows tenfold and the step is retried on a new `fresh()` (with a warning).

    On a CPU the three steps run in H's own memory, with no [in, in] matrix beside it: H is symmetric, so its
    transpose view is the same matrix in the column-major order LAPACK works in, and torch then factorises,
    inverts and factorises again in place (bit-identical to the out-of-place steps). Out of place, each step
    made its output beside its input: two matrices beside H at the peak, 970 MB at Llama-2-7B's 11008-wide
    down_proj, which put SparseGPT's peak over 4.5 GiB at 7B. Other devices take the out-of-place steps.
    """
    for attempt in range(1, MAX_DAMPING_TRIES + 1):
        H = fresh()
        H.diagonal().add_(percdamp * H.diagonal().mean())
        U, ok = _factorise_in_place(H) if H.device.type == "cpu" else _factorise(H)
        del H
        if ok and bool(torch.isfinite(U.sum())):  # a finite sum: no NaN or inf in U
            return U
        del U
        if attempt == MAX_DAMPING_TRIES:
            break
        retry = percdamp * 10 if percdamp > 0 else FIRST_RETRY_PERCDAMP
        log.warning(
            "sparsegpt: Cholesky factorisation failed with damping %g x mean(diag H); retrying with %g",
            percdamp,
            retry,
        )
        percdamp = retry
    raise ZpruneError(
        f"sparsegpt: the Hessian could not be factorised even with damping {percdamp:g} x mean(diag H); "
        "the calibration statistics are probably broken (NaN or inf)"
    )


def _factorise_in_place(H: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(U, whether both factorisations succeeded), in H's memory (H damped, contiguous)."""
    _symmetric_from_lower(H)  # what the out-of-place steps read: its lower triangle
    A = H.mT  # the same symmetric matrix, column-major
    info = torch.zeros((), dtype=torch.int32)
    torch.linalg.cholesky_ex(A, out=(A, info))
    if info.item() != 0:
        return A, False
    torch.cholesky_inverse(A, out=A)
    torch.linalg.cholesky_ex(A, upper=True, out=(A, info))
    return A, info.item() == 0


def _symmetric_from_lower(H: torch.Tensor, rows: int = 256) -> None:
    """H's upper triangle set to its lower one's mirror, in place, a band of `rows` rows at a time. A Gram
    summed by matrix products is symmetric only up to rounding; the factorisation reads the triangle that is
    the lower one in row-major order."""
    n = H.shape[0]
    for i in range(0, n, rows):
        j = min(i + rows, n)
        block = H[i:j, i:j]
        upper = torch.triu_indices(j - i, j - i, 1)
        block[upper[0], upper[1]] = block[upper[1], upper[0]]
        H[i:j, j:] = H[j:, i:j].T


def _factorise(H: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(U, whether both factorisations succeeded), each step's input freed as its output is made."""
    L, info = torch.linalg.cholesky_ex(H)
    del H
    if info.item() != 0:
        return L, False
    inverse = torch.cholesky_inverse(L)
    del L
    U, info = torch.linalg.cholesky_ex(inverse, upper=True)
    return U, info.item() == 0


def obs_walk(
    weight: torch.Tensor,
    hessian: torch.Tensor | Callable[[], torch.Tensor],
    choice: MaskChoice,
    blocksize: int,
    percdamp: float,
    quantizer: ColumnQuantizer | None = None,
    order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SparseGPT column walk. weight: [out, in], hessian: [in, in] (not changed), or a function returning a
    new one on each call (LayerStats.hessian: the walk then factorises that matrix itself, with no copy, and
    calls it again only to retry a failed factorisation); `quantizer` puts every
    kept weight on its grid as it is visited; `order` [in]: the columns in walk order (None: as they are).

    Returns (W, prune_mask): W in prune_precision() with masked entries exactly 0, prune_mask bool [out, in].

    Inside a block the columns are walked on its transpose [b, out], so that a column is a contiguous row:
    on [out, b] every column read, masked and written touched one cache line per row (the reference's
    layout), and at Llama-2-7B's widths the walk took 2.2x as long.
    """
    W = weight.to(prune_precision()).clone()  # [out, in]
    rows, columns = W.shape
    first = _own_hessian(hessian, W)  # [in, in]

    dead = first.diagonal() == 0  # inputs that were always 0: no information, so prune-free and zeroed
    if bool(dead.any()):
        W[:, dead] = 0
    if quantizer is not None:
        quantizer.start(W)
    if order is not None:
        W = W[:, order]

    def fresh() -> torch.Tensor:
        """The walk's H, its own to overwrite: dead inputs 1 on the diagonal, columns in walk order."""
        nonlocal first
        H, first = (first if first is not None else _own_hessian(hessian, W)), None
        if bool(dead.any()):
            H[dead, dead] = 1
        if order is not None:  # two steps, so that at most one copy is beside H
            H = H[order]
            H = H[:, order]
        return H

    U = upper_cholesky_of_inverse(fresh, percdamp)  # [in, in]

    prune_mask = torch.zeros(rows, columns, dtype=torch.bool, device=W.device)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        U1 = U[i1:i2, i1:i2].contiguous()  # [b, b], row-major: its rows are read one by one (U may be column-major)
        W1, mask1, Err1 = _walk_block(W[:, i1:i2].T.contiguous(), U1, choice, i1, quantizer)  # each [b, out]
        W[:, i1:i2] = W1.T
        prune_mask[:, i1:i2] = mask1.T
        W[:, i2:].addmm_(Err1.T, U[i1:i2, i2:], alpha=-1)  # [out, b] @ [b, in - i2]: the block's error, onward
    if order is not None:
        back = torch.argsort(order)
        W, prune_mask = W[:, back], prune_mask[:, back]
    return W, prune_mask


def _own_hessian(hessian: torch.Tensor | Callable[[], torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """A [in, in] matrix the walk may overwrite, on `like`'s device and in its dtype."""
    if callable(hessian):
        return hessian().to(device=like.device, dtype=like.dtype)
    return hessian.to(device=like.device, dtype=like.dtype, copy=True)


def _walk_block(W1: torch.Tensor, U1: torch.Tensor, choice: MaskChoice, i1: int, quantizer: ColumnQuantizer | None = None):
    """One block, transposed: W1 [b, out] the block's current weights, U1 [b, b]. Returns (W1, mask1, Err1),
    each [b, out]: the pruned weights, the mask (True = pruned), e = (w - q) / U_jj per column."""
    d = U1.diagonal()  # [b]
    b = W1.shape[0]
    pattern = choice.pattern
    if choice.fixed is not None:  # a given mask: reconstruction, GPTQ
        mask1 = choice.fixed[:, i1 : i1 + b].T.clone()
    elif not pattern.is_nm:  # unstructured: at the block's start, the lowest w^2 / U_jj^2 over all rows x b
        mask1 = select_prune_mask(W1.T.square() / d.square(), choice.sparsity, "layer", Pattern()).T.contiguous()
    else:
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
    Err1 = torch.empty_like(W1)
    for i in range(b):
        if choice.fixed is None and pattern.is_nm and i % pattern.m == 0:  # N:M: per row, the n lowest of m columns
            group = slice(i, i + pattern.m)
            mask1[group] = select_prune_mask(W1.T[:, group].square() / d[group].square(), 0.0, "row", pattern).T
        w = W1[i]  # [out]
        if quantizer is None:
            q = w.masked_fill(mask1[i], 0)
        else:  # elementwise: the kept weights' values are those of quantizing the masked column
            q = quantizer.column(W1, i, i1 + i, w).masked_fill_(mask1[i], 0)
        err = torch.sub(w, q, out=Err1[i]).div_(d[i])  # [out]
        W1[i + 1 :].addr_(U1[i, i + 1 :], err, alpha=-1)  # the later columns: [b - i - 1, out] -= U_i,j * e
        W1[i] = q  # exactly the pruned value
    return W1, mask1, Err1


def reconstruct(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    prune_mask: torch.Tensor,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """SparseGPT's weight update for a fixed mask (True = pruned), e.g. one chosen by a score method.

    weight: [out, in], hessian: [in, in] (LayerStats.hessian()). Returns the updated weight in the
    input's dtype; masked entries are exactly 0 (and so are weights of dead inputs, as in SparseGPT).
    """
    if prune_mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(prune_mask.shape)} differs from weight shape {tuple(weight.shape)}")
    check_options(blocksize, percdamp)
    mask = prune_mask.to(device=weight.device, dtype=torch.bool)
    W, _ = obs_walk(weight, hessian, MaskChoice(fixed=mask), blocksize, percdamp)
    return W.to(weight.dtype)


def gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    prune_mask: torch.Tensor | None,
    spec: QuantSpec,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, QuantGrid]:
    """GPTQ on a fixed mask: every kept weight rounded to its grid column by column, the pruned ones (True
    in `prune_mask`; None: none) held at exactly 0, each column's error spread over the columns not yet
    visited. weight: [out, in] (its pruned entries 0 already), hessian: [in, in]. Returns the quantized
    weight in the input's dtype and its grids."""
    check_options(blocksize, percdamp)
    rows, columns = weight.shape
    mask = torch.zeros(rows, columns, dtype=torch.bool, device=weight.device) if prune_mask is None else \
        prune_mask.to(device=weight.device, dtype=torch.bool)
    order = act_order(hessian.diagonal()).to(weight.device) if spec.act_order else None
    quantizer = ColumnQuantizer(spec, rows, columns, order)
    walk_mask = mask if order is None else mask[:, order]
    W, _ = obs_walk(weight, hessian, MaskChoice(fixed=walk_mask), walk_blocksize(blocksize, spec), percdamp, quantizer, order)
    return W.to(weight.dtype), quantizer.grid()


def check_options(blocksize: int, percdamp: float) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
        raise ZpruneUsageError(f"sparsegpt option blocksize must be a positive integer, got {blocksize!r}")
    if not percdamp >= 0:  # also refuses NaN
        raise ZpruneUsageError(f"sparsegpt option percdamp must be >= 0, got {percdamp!r}")


