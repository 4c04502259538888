"""The arithmetic a command does, step by step, from a ModelShape: matrix FLOPs and weights selected.

A window of L tokens through one decoder block costs 2 x its projections' weights x L (every projection is
a product) plus attention's two products (Q K^T and the weighted sum of V), 2 x L^2 x the attention width
each, counted in full: a CPU's eager and SDPA kernels compute every score of the causal square. The LM head
adds 2 x vocab x hidden x L to a window that reaches the logits (evaluation). Embedding, norms and the
statistics' sums of squares are left out (linear in the tokens, small beside the products); Gram matrices
add 2 x L x width^2 per input group and window. A mixture of experts is counted with every expert running
every token: an upper bound. Pruning adds each layer's `PruneRecipe.cost` (the method's own work).
"""

from __future__ import annotations

from typing import Sequence

from zprune_cli.estimation.shape import ModelShape
from zprune_cli.methods.base import Cost
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import Calibration


def block_window(shape: ModelShape, seqlen: int) -> float:
    """FLOPs of one window through one (average) decoder block."""
    projections = shape.block_linear_params / max(shape.n_blocks, 1)
    return 2 * projections * seqlen + 4 * seqlen**2 * (shape.attention_width or shape.hidden)


def gram_window(shape: ModelShape, seqlen: int) -> float:
    """FLOPs of adding one window's Gram matrices, every block's input groups."""
    return sum(2 * seqlen * group.width**2 for block in shape.groups for group in block)


def calibration(shape: ModelShape, cal: Calibration, block_calls: int, gram: bool) -> Cost:
    """`block_calls` block forwards of one window each, plus the Gram matrices of every window when asked."""
    return Cost(block_calls * block_window(shape, cal.seqlen) + (cal.nsamples * gram_window(shape, cal.seqlen) if gram else 0))


def propagation(shape: ModelShape, cal: Calibration, recipe: PruneRecipe) -> Cost:
    """--propagate pruned: each block runs every window twice (statistics, then the pruned block's outputs)."""
    calls = 1 + shape.n_blocks * 2 * cal.nsamples  # block 0 alone captures its inputs, then two runs a window
    return Cost(calls * block_window(shape, cal.seqlen) + (cal.nsamples * gram_window(shape, cal.seqlen) if recipe.needs_gram else 0))


def pruning(shape: ModelShape, recipe: PruneRecipe) -> Cost:
    """The recipe's own work on every pruned layer."""
    total = Cost()
    for (out, width), count in _counted(shape.layer_shapes).items():
        total += recipe.cost(out, width) * count
    return total


def evaluation(shape: ModelShape, windows: Sequence[tuple[int, int]]) -> Cost:
    """Perplexity over `windows` ((seqlen, n_windows) per dataset): every block and the LM head."""
    return Cost(sum(n * (shape.n_blocks * block_window(shape, L) + 2 * shape.vocab * shape.hidden * L) for L, n in windows))


def _counted(shapes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """How many layers have each shape (a recipe's cost is computed once per shape)."""
    counts: dict[tuple[int, int], int] = {}
    for shape in shapes:
        counts[shape] = counts.get(shape, 0) + 1
    return counts
