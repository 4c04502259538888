"""Mask refinement by 1-swaps (after SparseSwaps, arXiv 2512.10922): lower a layer's reconstruction
error from any starting mask by exchanging one kept and one pruned weight per row, keeping counts.

With the pruned part of row i, r = w * m (m = 1 where pruned), the row's error is e = r^T H r (H the
damped Hessian, the objective the reconstructions minimise). Swapping kept p (now pruned) for pruned u
(now kept) changes it by

    delta(p, u) = (2 w_p c_p + w_p^2 H_pp) + (-2 w_u c_u + w_u^2 H_uu) - 2 w_p w_u H_pu,   c = H r,

so rows decouple and every swap keeps the row's count (N:M: p and u in the same group of m, so
every group keeps exactly n pruned). Each round takes, per row, the best swap among the
`candidates` kept weights cheapest to prune and the `candidates` pruned weights cheapest to restore
(exact over all pairs when `candidates` covers the row; for N:M always exact over every group), and
applies it only if it lowers the error; c is updated in O(in) per row. Rounds stop early once no row
improves, so the error never rises.
"""

from __future__ import annotations

from dataclasses import dataclass

from zprune_cli.base.lazy import lazy
from zprune_cli.base.masks import Pattern
from zprune_cli.methods.base import prune_precision
from zprune_cli.methods.pcg import PCG_PERCDAMP, damped

torch = lazy("torch")

DEFAULT_ROUNDS = 100
CANDIDATES = 16
# A swap must lower the row's error by this fraction of it, so rounding noise never swaps back and forth.
MIN_GAIN = 1e-6


@dataclass
class SwapInfo:
    rounds: int  # rounds that ran (the last one may have found nothing)
    swaps: int  # swaps applied over all rows
    error_before: float  # sum over rows of r^T H r
    error_after: float


def layer_error(weight: torch.Tensor, hessian: torch.Tensor, prune_mask: torch.Tensor) -> float:
    """sum_i r_i^T H r_i with r = the pruned weights (what dropping them costs, before any update)."""
    R = weight.to(prune_precision()) * prune_mask
    return float((R @ hessian.to(prune_precision()) * R).sum())


def refine_swaps(weight: torch.Tensor, hessian: torch.Tensor, prune_mask: torch.Tensor, pattern: Pattern,
                 rounds: int = DEFAULT_ROUNDS, percdamp: float = PCG_PERCDAMP,
                 candidates: int = CANDIDATES) -> tuple[torch.Tensor, SwapInfo]:
    """A refined copy of `prune_mask` (bool [out, in], True = pruned) and what the refinement did.

    A row no swap improved keeps its weights, mask and c, so no later round can improve it: each round
    searches only the rows the round before changed, and each row's error is kept up to date by the gains
    applied. C = (W * M) H, O(out in^2), is computed once: the final error used to be a second such product
    (at a Llama-2-7B down_proj, 4096 x 11008^2), and every round scored every row."""
    W = weight.to(prune_precision())
    H = damped(hessian.to(W.device), percdamp)
    M = prune_mask.to(device=W.device, dtype=torch.bool).clone()
    C = (W * M) @ H  # [out, in], c = H r for every row
    error = (W * M * C).sum(1)  # [out], r^T H r per row
    before = float(error.sum())
    find = _group_swaps(pattern) if pattern.is_nm else _row_swaps(candidates)
    swaps, done = 0, 0
    active = None  # the rows to search: all at first, then those the last round changed
    for done in range(1, rounds + 1):
        gain, p, u = find(*(x if active is None else x[active] for x in (W, M, C)), H)  # best delta per row, its columns
        rows = torch.arange(W.shape[0], device=W.device) if active is None else active
        better = gain < -MIN_GAIN * error[rows].clamp_min(torch.finfo(prune_precision()).tiny)
        if not bool(better.any()):
            break
        r, p, u = rows[better], p[better], u[better]
        M[r, p], M[r, u] = True, False
        change = H[p].mul_(W[r, p].unsqueeze(1)).sub_(H[u].mul_(W[r, u].unsqueeze(1)))  # [rows, in]: H (r' - r)
        C.index_add_(0, r, change)
        error[r] += gain[better]
        swaps += int(better.sum())
        active = r
    after = float((W * M * C).sum())
    return M, SwapInfo(done, swaps, before, after)


def _costs(W, H, M, C):
    """(cost of pruning each kept weight, cost of restoring each pruned weight), inf where not allowed;
    three [out, in] temporaries."""
    square = W.square().mul_(H.diagonal())  # w^2 H_jj
    twice = (W * C).mul_(2)  # 2 w c
    add = (square + twice).masked_fill_(M, float("inf"))
    remove = square.sub_(twice).masked_fill_(~M, float("inf"))
    return add, remove


def _row_swaps(candidates: int):
    def find(W, M, C, H):
        add, remove = _costs(W, H, M, C)
        k = min(candidates, W.shape[1])
        add_cost, p = add.topk(k, dim=1, largest=False)  # [out, k]
        remove_cost, u = remove.topk(k, dim=1, largest=False)
        cross = H[p.unsqueeze(2), u.unsqueeze(1)]  # [out, k, k]
        pair = W.gather(1, p).unsqueeze(2) * W.gather(1, u).unsqueeze(1)  # [out, k, k]
        delta = add_cost.unsqueeze(2) + remove_cost.unsqueeze(1) - 2 * pair * cross
        best, flat = delta.reshape(W.shape[0], -1).min(1)
        return best, p.gather(1, (flat // k).unsqueeze(1)).squeeze(1), u.gather(1, (flat % k).unsqueeze(1)).squeeze(1)

    return find


def _group_swaps(pattern: Pattern):
    def find(W, M, C, H):
        rows, columns = W.shape
        m = pattern.m
        index = torch.arange(columns, device=W.device).reshape(-1, m)  # [groups, m]
        blocks = H[index.unsqueeze(2), index.unsqueeze(1)]  # [groups, m, m], H's diagonal blocks
        add, remove = (x.reshape(rows, -1, m) for x in _costs(W, H, M, C))
        Wg = W.reshape(rows, -1, m)
        delta = (Wg.unsqueeze(3) * Wg.unsqueeze(2)).mul_(blocks).mul_(-2)  # [out, g, m, m], one temporary
        delta.add_(add.unsqueeze(3)).add_(remove.unsqueeze(2))  # add_p + remove_u - 2 w_p w_u H_pu
        best, flat = delta.reshape(rows, -1).min(1)
        group, within = flat // (m * m), flat % (m * m)
        return best, group * m + within // m, group * m + within % m

    return find
