"""N:M channel permutation (RIA, Zhang et al., ICLR 2024): reorder a layer's input columns before the N:M
groups are formed, so that important weights fall into different groups and fewer of them are pruned.

The two steps of RIA's code (`--reallocation`, `--lsa`), on a layer's scores S [out, in]:
- heuristic: the columns sorted by their summed score (ascending) and dealt across the m positions of the
  groups: position 0 of every group gets the next in/m columns in ascending order, position 1 the next
  in/m in descending order, and so on, alternating;
- lsa: for each position p in turn, the columns at position p are re-assigned to the groups by a linear sum
  assignment (scipy's exact solver) that maximises the kept score, each group's other m - 1 columns held in
  place. With those fixed, group g keeps (per row i) the m - n - 1 largest of its others plus
  max(v, f_ig), f_ig the (m - n)-th largest of its others, so the gain of column c in group g is
  sum_i max(S_ic, f_ig) (plus a constant per group).
The kept score is the sum of the scores the N:M mask keeps. Both steps keep the better of before and after
(the heuristic per layer, the LSA per block and position, and the whole search per layer once more in
float64), so a permutation never lowers a layer's kept score.

Bound on the LSA's time (RIA's `--fast` splits the columns into blocks by layer name; here one work bound
decides for every shape): the groups, in their current order, are split into contiguous blocks of at most
sqrt(LSA_WORK / rows) groups, and each block is assigned on its own. The gain matrix of a block costs rows x
groups^2 operations, so a layer costs at most about rows x in x sqrt(LSA_WORK / rows) per position pass...
i.e. rows x in x G_block operations in all (m positions x in/m/G_block blocks x rows x G_block^2). For a
7B-shaped layer this gives blocks of 256 groups (q/k/v/o, down_proj: 4096 rows) and 156 (gate/up: 11008
rows), close to RIA's --fast split (4, 8 and 16 blocks); SmolLM2-135M's layers fit in one block each.

Tied columns (`ties`): a list of index matrices [r, s]; the columns of each are permuted by one permutation of
the s positions, the same for its r rows of columns (the query heads that share a key-value head), found on
the scores of those columns stacked. Columns in no tie keep their place. None: every column is free.
"""

from __future__ import annotations

import math

from zprune_cli.base.lazy import lazy
from zprune_cli.base.masks import BAND_BYTES, Pattern, sorted_in_groups
from zprune_cli.methods.base import Cost

torch = lazy("torch")

PERMUTATIONS = ("none", "heuristic", "lsa")
# Where a permutation may be restricted so that a producer can absorb it (o_proj's, to within each key-value
# head): "native" restricts it and stores the layer natively N:M; "free" searches every column and maps the
# mask back (engine/permuted.py).
PERMUTE_LAYOUTS = ("native", "free")
LSA_WORK = 2**28  # rows x groups^2 of one block's gain matrix: about 0.2 s on one CPU core
_CHUNK_BYTES = 2**22  # working memory of one slice of the gain matrix's sum


def kept_score(scores: torch.Tensor, pattern: Pattern) -> float:
    """Sum of the scores an N:M mask keeps (the m - n largest of every group of m columns of every row), float64.
    In bands of rows of about 1 MiB (masks.BAND_BYTES), which stay in cache through the sort's passes: 6x
    faster on a 7B matrix than the whole at once."""
    band = max(1, BAND_BYTES // (scores.element_size() * scores.shape[1]))
    return sum(_kept_score(scores[first : first + band], pattern) for first in range(0, scores.shape[0], band))


def _kept_score(scores: torch.Tensor, pattern: Pattern) -> float:
    rows, cols = scores.shape
    ordered = sorted_in_groups(scores.reshape(rows, cols // pattern.m, pattern.m))  # a search calls this twice a layer
    return sum(float(c.sum(dtype=torch.float64)) for c in ordered[pattern.n :])  # the m - n largest


def find_permutation(scores: torch.Tensor, pattern: Pattern, mode: str,
                     ties: list[torch.Tensor] | None = None) -> torch.Tensor:
    """perm [in] (int64): column j of the permuted layer is column perm[j] of the original. scores [out, in]."""
    return permutation_and_scores(scores, pattern, mode, ties)[0]


def permutation_and_scores(scores: torch.Tensor, pattern: Pattern, mode: str,
                           ties: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(find_permutation's perm, the scores' columns in its order, or None when perm is the identity): the
    permuted scores the search compared anyway, for a score method's mask (engine.permuted.Permuter.select)."""
    rows, cols = scores.shape
    perm = torch.arange(cols)
    if mode == "none":
        return perm, None
    if ties is None:
        return searched(scores, pattern, mode)  # every column free: no copy of the scores to stack
    for index in ties:
        r, s = index.shape
        stacked = scores[:, index.reshape(-1)].reshape(rows, r, s).transpose(0, 1).reshape(r * rows, s)  # [r*out, s]
        order = search(stacked, pattern, mode)
        perm[index] = index[:, order]
    return perm, None if bool((perm == torch.arange(cols)).all()) else scores.index_select(1, perm)


def search(scores: torch.Tensor, pattern: Pattern, mode: str) -> torch.Tensor:
    """The column order [in] of the best permutation found: the heuristic's (or the identity, when the
    heuristic would keep less), refined by the LSA for mode "lsa"."""
    return searched(scores, pattern, mode)[0]


def searched(scores: torch.Tensor, pattern: Pattern, mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(search's order, the scores' columns in that order, or None for the identity)."""
    identity = torch.arange(scores.shape[1])
    kept = kept_score(scores, pattern)
    order = heuristic_order(scores, pattern.m)
    moved = scores.index_select(1, order)  # index_select: twice as fast as scores[:, order]
    after = kept_score(moved, pattern)
    if after <= kept:
        order, moved = identity, None  # RIA would keep the heuristic's order even then; it never does better here
    else:
        kept = after
    if mode == "lsa":
        refined = lsa_refine(scores, order, pattern)
        refined_scores = scores.index_select(1, refined)
        if kept_score(refined_scores, pattern) > kept:
            order, moved = refined, refined_scores
    return order, moved


def heuristic_order(scores: torch.Tensor, m: int) -> torch.Tensor:
    """RIA's channel reallocation: order [in] dealing the columns, sorted by summed score, across the m
    positions of the groups, alternating direction."""
    cols = scores.shape[1]
    groups = cols // m
    ranked = torch.sort(scores.sum(dim=0)).indices  # ascending, as RIA's torch.sort
    order = torch.empty_like(ranked)
    for p in range(m):
        share = ranked[p * groups : (p + 1) * groups]
        order[p::m] = share if p % 2 == 0 else share.flip(0)
    return order


def lsa_refine(scores: torch.Tensor, order: torch.Tensor, pattern: Pattern, work: int = LSA_WORK) -> torch.Tensor:
    """RIA's linear-sum-assignment pass: for each position in turn, and each block of groups, re-assign the
    columns at that position to the block's groups. Returns a new order [in]."""
    rows, cols = scores.shape
    groups = cols // pattern.m
    per_block = max(1, min(groups, math.isqrt(max(1, work // rows))))
    blocks = math.ceil(groups / per_block)
    bounds = [b * groups // blocks for b in range(blocks + 1)]  # an even split, in groups
    order = order.clone()
    for position in range(pattern.m):
        for first, last in zip(bounds, bounds[1:]):
            span = slice(first * pattern.m, last * pattern.m)
            local = order[span]
            order[span] = local[assign_position(scores[:, local], position, pattern)]
    return order


def assign_position(block: torch.Tensor, position: int, pattern: Pattern) -> torch.Tensor:
    """Within one block of groups (scores [out, G*m], in their current order), the column order that gives each
    group the best column at `position` by a linear sum assignment; the identity unless it keeps more."""
    from scipy.optimize import linear_sum_assignment  # the exact Hungarian-type solver, in C

    rows, cols = block.shape
    m, keep = pattern.m, pattern.m - pattern.n
    groups = block.reshape(rows, cols // m, m)  # [out, G, m]
    candidates = groups[:, :, position]  # [out, G]: the column at `position` of each group
    others = torch.cat([groups[..., :position], groups[..., position + 1 :]], dim=-1)  # [out, G, m - 1]
    floor = others.topk(keep, dim=-1).values[..., keep - 1]  # [out, G]: the (m - n)-th largest of the others
    gain = max_sum(candidates, floor).double()  # [G, G]: gain[g, c] of column c placed in group g
    chosen = torch.as_tensor(linear_sum_assignment(gain.numpy(), maximize=True)[1])  # chosen[g] = c
    identity = torch.arange(cols)
    before, after = float(gain.diagonal().sum()), float(gain[torch.arange(len(chosen)), chosen].sum())
    if not after > before + 1e-9 * abs(before):  # ties and rounding: no move
        return identity
    order = identity.reshape(-1, m).clone()
    order[:, position] = order[chosen, position]
    return order.reshape(-1)


def max_sum(values: torch.Tensor, floors: torch.Tensor) -> torch.Tensor:
    """out[g, c] = sum_i max(values[i, c], floors[i, g]); values, floors [out, G] -> [G, G] float32.

    In slices of rows (a few MiB at a time): one elementwise maximum and one sum per slice, faster on a CPU
    than torch.cdist's L1 distance through max(a, b) = (a + b + |a - b|) / 2."""
    rows, groups = values.shape
    values, floors = values.float(), floors.float()
    chunk = max(1, _CHUNK_BYTES // (4 * groups * groups))
    out = torch.zeros(groups, groups)
    buffer = torch.empty(min(chunk, rows), groups, groups)
    for i in range(0, rows, chunk):
        part = buffer[: min(chunk, rows - i)]
        torch.maximum(values[i : i + chunk, None, :], floors[i : i + chunk, :, None], out=part)  # [chunk, g, c]
        out += part.sum(dim=0)
    return out


def lsa_block_groups(rows: int, groups: int, work: int = LSA_WORK) -> int:
    """Groups per block of the LSA's assignment (lsa_refine's split)."""
    return max(1, min(groups, math.isqrt(max(1, work // rows))))


def permutation_cost(out: int, width: int, mode: str, pattern: Pattern) -> Cost:
    """The search's work on one [out, width] layer, for --dry-run's time: the scores, the heuristic's sort and
    the kept scores compared (a few elementwise passes, `selected`), and for "lsa", per position and block of G
    groups, the gain matrix (out x G^2 maxima and sums: out x width x G in all) and the assignment (about G^3)."""
    if mode == "none":
        return Cost()
    cost = Cost(selected=4.0 * out * width)  # scores, the two kept scores, the permuted copy
    if mode == "lsa":
        groups = width // pattern.m
        g = lsa_block_groups(out, groups)
        cost += Cost(flops=2.0 * out * width * g + pattern.m * math.ceil(groups / g) * g**3)
    return cost


def permutation_work_bytes(out: int, width: int, mode: str, gram: bool) -> int:
    """Bytes the search and the permuted prune hold beside the method's own, for --dry-run: the float32 scores
    and the permuted float32 copy of the weight, the permuted copy of the statistics (its Gram matrix when the
    recipe reads one), and for "lsa" one slice of the gain sum and a block's gain matrix (float32 and float64)."""
    if mode == "none":
        return 0
    work = 2 * out * width * 4 + (width * width * 4 if gram else 0)
    if mode == "lsa":
        g = lsa_block_groups(out, width)
        work += _CHUNK_BYTES + g * g * (4 + 8)
    return work
