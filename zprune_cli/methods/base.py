"""What every pruning method is: (weight, statistics) -> scores -> mask -> pruned weight.

A score method only writes `score`; the base class turns the scores into a mask and zeroes the
weight. A method that also updates the surviving weights (SparseGPT) overrides `prune`.
Adding a method means adding one module under `zprune_cli/methods/` with a `@register`ed subclass
(`methods/__init__.py` imports every module there). Its options are dataclass fields declared with
`option(default, low, high)`: their type and bounds are checked here, once, for every method.
"""

from __future__ import annotations

import math
from abc import ABC
from dataclasses import dataclass, field, fields
from typing import ClassVar

from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.base.lazy import lazy
from zprune_cli.base.masks import Pattern, select_prune_mask
from zprune_cli.methods.quantize import QuantGrid
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")


def prune_precision() -> torch.dtype:
    """The dtype every score and weight update is computed in, whatever the weight's dtype (a function, not a
    constant, so that importing the method registry does not import torch)."""
    return torch.float32


METHODS: dict[str, type[Method]] = {}


@dataclass(frozen=True)
class Cost:
    """What pruning one layer costs, for --dry-run's time estimate: `flops`, matrix arithmetic (an
    [a, b] @ [b, c] product is 2abc), and `selected`, weights passed through a score and a selection
    (elementwise work and a k-th value, timed apart from products: on a CPU they run far slower per element)."""

    flops: float = 0.0
    selected: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.selected + other.selected)

    def __mul__(self, times: float) -> Cost:
        return Cost(self.flops * times, self.selected * times)


@dataclass
class PruneResult:
    """weight: same dtype and device as the input, pruned entries exactly 0. prune_mask: True = pruned."""

    weight: torch.Tensor
    prune_mask: torch.Tensor
    grid: QuantGrid | None = None  # the weight's quantization grids, when the method quantized while pruning


def layer_error(delta: torch.Tensor, weight: torch.Tensor, gram: torch.Tensor) -> float:
    """The layer's reconstruction error relative to its output, ||W X - W' X||^2 / ||W X||^2, from the Gram
    H = sum x x^T alone: trace(D H D^T) / trace(W H W^T) with D = W - W' ([out, in] each; what SparseGPT's and
    llm-compressor's code report per layer). 0 for a layer whose output is zero."""
    H = gram.to(device=weight.device, dtype=prune_precision())
    D, W = delta.to(prune_precision()), weight.to(prune_precision())
    output = float(((W @ H) * W).sum(dtype=torch.float64))
    return float(((D @ H) * D).sum(dtype=torch.float64)) / output if output > 0 else 0.0


def option(default: float | int, low: float | None = None, high: float | None = None, *, open_low: bool = False):
    """A method option: a dataclass field whose annotation (float or int) and bounds [low, high] (low
    excluded with open_low) the base checks; a bad value exits 2 naming the method, option and range."""
    return field(default=default, metadata={"low": low, "high": high, "open_low": open_low})


def _accepted(kind: type, meta: dict) -> str:
    """The accepted range in words: 'an integer >= 1', 'a number > 0', 'a number in [0, 1]'."""
    what = "an integer" if kind is int else "a finite number"
    low, high = meta.get("low"), meta.get("high")
    if low is not None and high is not None:
        return f"{what} in {'(' if meta.get('open_low') else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"{what} {'>' if meta.get('open_low') else '>='} {low:g}"
    return f"{what} <= {high:g}" if high is not None else what


class Method(ABC):
    """One pruning method. Options are constructor keywords, e.g. RIA(a=0.5)."""

    name: ClassVar[str]
    default_scope: ClassVar[str]  # "row" | "layer"
    needs_gram: ClassVar[bool] = False  # reads Gram matrices (sum x x^T), not only sums of squares
    updates_weights: ClassVar[bool] = False  # changes surviving weights too (so `auto` propagates pruned inputs)
    uses_scope: ClassVar[bool] = True  # ranks by row or by layer (False: chooses its own way, e.g. per block)
    uses_stats: ClassVar[bool] = True  # reads activation statistics at all (False: magnitude)
    # quantizes inside its own weight update when given `quant=` (SparseGPT's joint walk); the others are
    # quantized after their mask by GPTQ with the mask held fixed
    joint_quantization: ClassVar[bool] = False
    # OWL's outlier share is defined on this method's scores (Wanda's): the allocation asks the registry for it
    owl_score: ClassVar[bool] = False

    @classmethod
    def work_bytes(cls, weights: int, width: int) -> int:
        """Bytes a prune of one layer holds beside its weight and statistics, for the dry run: `weights` the
        layer's entries, `width` its input width. A score method: its float32 scores, two bool masks (the mask
        is applied in place) and the selection's temporaries (N:M's bands of ranks; the per-row selection's
        chunk of rows), 10 bytes an entry in all: the 7B 2:4 prunes peaked within 1% of it."""
        return weights * (2 * 4 + 2)

    def __post_init__(self) -> None:
        """Every declared option (`option(...)` field) as its type, within its bounds (strings from a CLI or
        TOML are accepted); a subclass needing more calls super().__post_init__() first."""
        for f in fields(self) if hasattr(self, "__dataclass_fields__") else ():
            if f.init and "low" in f.metadata:
                kind = int if f.type in (int, "int") else float
                value = number_option(self.name, f.name, getattr(self, f.name), kind, _accepted(kind, f.metadata))
                if not _within(value, f.metadata):
                    raise ZpruneUsageError(f"{self.name} option {f.name} must be {_accepted(kind, f.metadata)}, "
                                           f"got {getattr(self, f.name)!r}")
                setattr(self, f.name, value)

    def score(self, weight_fp32: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        """Importance of each weight, [out, in] -> [out, in]; the lowest are pruned."""
        raise NotImplementedError(f"{type(self).__name__} does not score weights")

    def cost(self, out: int, width: int) -> Cost:
        """The work of pruning one [out, width] weight: a score method scores and selects every weight once;
        a method that does more (a weight update, an iterative solver) states its own."""
        return Cost(0.0, float(out * width))

    def prune(
        self,
        weight: torch.Tensor,
        stats: LayerStats,
        sparsity: float,
        pattern: Pattern,
        scope: str | None = None,
    ) -> PruneResult:
        """Score in prune_precision(), select exactly the lowest entries, zero them."""
        prune_mask = self.prune_mask(weight, stats, sparsity, pattern, scope)
        return PruneResult(weight=weight.masked_fill(prune_mask, 0), prune_mask=prune_mask)

    def prune_mask(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern,
                   scope: str | None = None) -> torch.Tensor:
        """A score method's mask (True = pruned) without the pruned copy of the weight: the engine zeroes
        the layer in place (`prune` is this and `weight.masked_fill`)."""
        scores = self.score(weight.to(prune_precision()), stats)
        return select_prune_mask(scores, sparsity, scope or self.default_scope, pattern)


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method subclass reachable by its `name`."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"two methods are named {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


def input_norms(stats: LayerStats, like: torch.Tensor) -> torch.Tensor:
    """||X_j||_2 as a [1, in] row in prune_precision() on the weight's device, to broadcast over rows."""
    return stats.norms.to(device=like.device, dtype=prune_precision()).reshape(1, -1)


def safe_divisor(x: torch.Tensor) -> torch.Tensor:
    """x with zeros replaced by 1, so that 0 / 0 becomes 0 instead of NaN (zero rows and columns)."""
    return torch.where(x == 0, torch.ones_like(x), x)


def number_option(method: str, option: str, value: object, kind: type = float, wanted: str = "") -> float | int:
    """A method option as a finite float or an exact int (strings from a CLI or TOML are accepted; a bool is not)."""
    try:
        number = kind(value)
        exact = not isinstance(value, bool) and math.isfinite(float(value)) and (kind is float or number == float(value))
    except (TypeError, ValueError):
        exact = False
    if not exact:
        wanted = wanted or ("an integer" if kind is int else "a finite number")
        raise ZpruneUsageError(f"{method} option {option} must be {wanted}, got {value!r}")
    return number


def _within(value: float, meta: dict) -> bool:
    low, high = meta.get("low"), meta.get("high")
    above = low is None or (value > low if meta.get("open_low") else value >= low)
    return above and (high is None or value <= high)
