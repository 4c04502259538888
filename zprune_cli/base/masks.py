"""Scores -> prune mask: the sparsity pattern (unstructured or N:M) and the scope (row or layer).

A mask is a bool tensor shaped like the weight, True where the weight is pruned (set to zero).
Entries are always chosen by index (topk on the scores) so that exactly k are pruned; a
`score <= threshold` test would prune every tied entry and overshoot the sparsity.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from zprune_cli.base.choices import SCOPES
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.base.lazy import lazy

torch = lazy("torch")

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Pattern:
    """Which entries may be pruned together.

    Pattern() (n = m = 0) is unstructured. Pattern(n, m) is N:M: in every group of m consecutive
    input columns of each row, the n lowest-scored weights are pruned (2:4 prunes 50%).
    """

    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        if (self.n, self.m) != (0, 0) and not 0 < self.n < self.m:
            raise ZpruneUsageError(f"invalid N:M pattern {self.n}:{self.m}: need 0 < N < M, e.g. 2:4")

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """'unstructured' or 'N:M' (e.g. '2:4', '4:8')."""
        if text.strip().lower() == "unstructured":
            return cls()
        match = _NM.match(text)
        if match is None or not 0 < int(match.group(1)) < int(match.group(2)):
            # "0:0" is refused too: unstructured has one spelling.
            raise ZpruneUsageError(f"invalid pattern {text!r}: use 'unstructured' or N:M with 0 < N < M, such as 2:4")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


def check_pattern_fits(in_features: int, pattern: Pattern) -> None:
    """Raise ZpruneUsageError unless an N:M pattern tiles the input width exactly."""
    if pattern.is_nm and in_features % pattern.m != 0:
        raise ZpruneUsageError(
            f"pattern {pattern} needs the input width to be a multiple of {pattern.m}, "
            f"but it is {in_features}"
        )


def prune_count(sparsity: float, total: int) -> int:
    """k = floor(sparsity * total), read as the user meant it: 0.29 * 100 is 28.999999999999996 in
    binary floating point, and that must still prune 29, so a relative slack of 1e-12 is allowed."""
    if not 0.0 <= sparsity <= 1.0:  # also refuses NaN
        raise ZpruneUsageError(f"sparsity must be between 0 and 1, got {sparsity}")
    exact = sparsity * total
    return min(total, math.floor(exact + 1e-12 * max(1.0, exact)))


def select_prune_mask(scores: torch.Tensor, sparsity: float, scope: str, pattern: Pattern) -> torch.Tensor:
    """Mask of the lowest-scored weights, True = pruned. scores: [out, in] -> bool [out, in].

    - N:M: every row prunes exactly n of each m consecutive columns (sparsity and scope unused).
    - scope "row": every row prunes exactly k = prune_count(sparsity, in) entries.
    - scope "layer": the matrix prunes exactly k = prune_count(sparsity, out * in) entries.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [out, in], got shape {tuple(scores.shape)}")
    rows, cols = scores.shape
    if pattern.is_nm:
        check_pattern_fits(cols, pattern)
        return lowest_n_of_m(scores, pattern.n, pattern.m)

    if scope == "row":
        return lowest_k(scores, prune_count(sparsity, cols))
    if scope == "layer":
        return lowest_k(scores.reshape(1, -1), prune_count(sparsity, rows * cols)).reshape(rows, cols)
    raise ZpruneUsageError(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")


# Ranks by comparisons for at most this m, over at least this many groups a row (a layer; not SparseGPT's
# one group a row at a time, where one topk call costs less than m - 1 comparisons).
MAX_COMPARED_M = 16
MIN_COMPARED_GROUPS = 64
BAND_BYTES = 2**20  # scores per band of rows in lowest_n_of_m and kept_score: held in cache between passes


def lowest_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of m consecutive columns of scores [r, c], the n lowest as True. A sorting network
    (sorted_in_groups) gives each group's n-th and (n+1)-th lowest score, and the n lowest are those at or
    below the n-th: on a Llama-2-7B MLP matrix at 2:4, one thread, 0.15 s, where counting each entry's rank
    by m - 1 comparisons took 0.56 s and topk's int64 indices and scatter 1.2 s. A single group a row,
    m > 16, or a group with equal scores on both sides of its cut (magnitude on bfloat16 or quantized weights,
    where ties abound): topk, whose own order among ties every mask zprune published was made with, so those
    results reproduce; topk runs on those groups alone (a band of a bfloat16 7B matrix has some in nearly
    every band, and topk on the whole band made magnitude's 2:4 prune of a 7B shape 1.7x wanda's).

    In bands of rows of about 1 MiB of scores: each of the comparisons reads its slices again, and a band
    stays in the CPU's cache where a whole 7B matrix (180 MB) is read from memory each time. Banding changes
    no group's answer, so the mask is the same."""
    rows, cols = scores.shape
    if bool(torch.isnan(scores.sum())) and bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN; a method must guard its divisions")
    if m > MAX_COMPARED_M or cols // m < MIN_COMPARED_GROUPS:
        return _topk_n_of_m(scores.reshape(rows, cols // m, m), n).reshape(rows, cols)
    band = max(1, BAND_BYTES // (scores.element_size() * cols))
    if band >= rows:
        return _compared_n_of_m(scores, n, m)
    mask = torch.empty(rows, cols, dtype=torch.bool, device=scores.device)
    for first in range(0, rows, band):
        mask[first : first + band] = _compared_n_of_m(scores[first : first + band], n, m)
    return mask


def _compared_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """lowest_n_of_m by a sorting network (topk for the groups that tie at their cut), scores [r, c] without NaN."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)  # [out, in/m, m]
    ordered = sorted_in_groups(groups)
    cut = ordered[n - 1]  # [out, in/m]: the largest pruned score of each group
    mask = groups <= cut.unsqueeze(-1)
    tied = cut == ordered[n]  # the smallest kept score equals it: the tie rule decides
    if bool(tied.any()):  # topk chooses each group alone, so those groups get the mask topk gives them anyway
        where = tied.nonzero(as_tuple=True)
        mask[where] = _topk_n_of_m(groups[where], n)
    return mask.reshape(rows, cols)


def sorted_in_groups(groups: torch.Tensor) -> list[torch.Tensor]:
    """groups [r, G, m] -> m tensors [r, G]: each group's scores in ascending order, sorted by a network of m
    rounds of compare-exchanges (odd-even transposition), elementwise over all groups at once: topk or sort
    along a last dimension of 4 or 8 is 7x slower."""
    m = groups.shape[-1]
    columns = list(groups.unbind(-1))
    for r in range(m):
        for i in range(r % 2, m - 1, 2):
            low, high = columns[i], columns[i + 1]
            columns[i], columns[i + 1] = torch.minimum(low, high), torch.maximum(low, high)
    return columns


def _topk_n_of_m(groups: torch.Tensor, n: int) -> torch.Tensor:
    lowest = groups.topk(n, dim=-1, largest=False).indices  # [out, in/m, n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of scores [r, c], exactly the k lowest entries as True; ties at the k-th value go to
    the lowest column indices.

    The k-th value of each row (`kth_smallest`), then one comparison `<= kth` and a count per row: when
    every row counts exactly k (no other entry ties with its k-th value, the rule for real-valued
    scores), that is the mask. Otherwise the entries equal to the k-th value are settled by rank.
    """
    rows, cols = scores.shape
    if k <= 0:
        return torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    if k >= cols:
        return torch.ones(rows, cols, dtype=torch.bool, device=scores.device)
    kth = kth_smallest(scores, k)  # [r, 1]
    if torch.isnan(kth).any():
        raise ValueError("scores contain NaN; a method must guard its divisions")
    mask = scores <= kth
    if bool((row_counts(mask) == k).all()):
        return mask
    mask = scores < kth
    missing = k - row_counts(mask)  # [r], >= 1: how many entries equal to the k-th value to add
    ties = (scores == kth).nonzero()  # [t, 2] in row-major order
    row = ties[:, 0]
    counts = torch.bincount(row, minlength=rows)
    rank = torch.arange(len(row), device=scores.device) - (counts.cumsum(0) - counts)[row]  # rank in its row
    take = ties[rank < missing[row]]
    mask[take[:, 0], take[:, 1]] = True
    return mask


def row_counts(mask: torch.Tensor) -> torch.Tensor:
    """The True entries of each row of a bool mask [r, c], as int64 [r]. On the CPU numpy counts: torch's sum
    of a bool mask first casts the whole of it to the count's dtype (4-8 bytes an entry, 180 MB at a Llama-2-7B
    down_proj) and took 2.1 s there, one thread, where numpy's count took 0.06 s and no memory."""
    if mask.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.count_nonzero(mask.detach().numpy(), axis=1).astype(np.int64))
    return mask.sum(dim=1)


ROWS_PER_PARTITION = 256  # np.partition of this many rows at a time: its copy is a chunk, and stays in cache


def kth_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry of each row of scores [r, c], as [r, 1] (NaN counts as the largest).

    On the CPU numpy's introselect (np.partition), ROWS_PER_PARTITION rows at a time: torch.kthvalue copies
    each row with int64 indices and took 0.9-1.6 s on each 4096 x 11008 matrix of a Llama-2-7B block, one
    thread. np.partition of the whole matrix copied all of it (4 bytes an entry, beside the scores) and took
    2.7 s where the chunks take 1.3 s (measured side by side, loaded machine).
    """
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64):
        import numpy as np

        if scores.shape[0] == 1 and scores.shape[1] >= RADIX_MIN and scores.dtype == torch.float32:
            kth = _kth_by_radix(scores.detach().reshape(-1), k)
            if kth is not None:
                return kth.reshape(1, 1)
        values = scores.detach().numpy()
        kth = np.empty((values.shape[0], 1), dtype=values.dtype)
        for start in range(0, values.shape[0], ROWS_PER_PARTITION):
            rows = values[start : start + ROWS_PER_PARTITION]
            kth[start : start + ROWS_PER_PARTITION] = np.partition(rows, k - 1, axis=1)[:, k - 1 : k]
        return torch.from_numpy(kth)
    return scores.kthvalue(k, dim=1, keepdim=True).values


RADIX_MIN = 1 << 20  # one row at least this long (a whole layer's scores) is selected by its bits first


def _kth_by_radix(flat: torch.Tensor, k: int) -> torch.Tensor | None:
    """The k-th smallest of non-negative float32 values: their bits read as integers keep their order, so a
    count of the top 15 bits (bincount, one pass) finds the bucket holding the k-th, and np.partition runs on
    that bucket alone: 1.9x faster than np.partition of a whole 11008 x 4096 layer. None when a value is
    negative or NaN (the caller partitions everything)."""
    import numpy as np

    if not bool(flat.min() >= 0):  # a negative value or NaN: bits no longer sort
        return None
    top = (flat.view(torch.int32) & 0x7FFFFFFF) >> 16  # [n], -0.0 as 0.0
    counts = torch.bincount(top, minlength=1 << 15).cumsum(0)
    bucket = int(torch.searchsorted(counts, k))  # the first bucket whose running count reaches k
    below = int(counts[bucket - 1]) if bucket > 0 else 0
    values = flat[top == bucket].numpy()
    return torch.tensor(np.partition(values, k - below - 1)[k - below - 1])
