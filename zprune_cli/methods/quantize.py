"""Weights on a uniform integer grid, fitted and applied column by column as GPTQ's and SparseGPT's
reference code (`quant.py`) does it.

A grid of b bits has maxq = 2^b - 1 levels above the lowest: q = clamp(round(w / scale) + zero, 0, maxq)
and the weight becomes scale * (q - zero). Fitting a grid to values x (0 always included in the range):

    asymmetric  xmin = min(x, 0), xmax = max(x, 0), scale = (xmax - xmin) / maxq, zero = round(-xmin / scale)
    symmetric   xmax = max(|xmin|, xmax), xmin = -xmax where xmin < 0, zero = (maxq + 1) / 2

(a range that is all zero becomes [-1, 1]). 0 is always a grid value (q = zero), so a pruned weight
quantizes to exactly 0. One grid per output row and group of `group_size` consecutive input columns
(`group_size` 0: one per row, "per channel"). Scales are rounded up to bfloat16 precision when fitted:
then scale * (q - zero) is exact in float32 and a checkpoint stores the scale exactly in any 16- or
32-bit dtype, so an exported model dequantizes to the saved weights bit for bit.

Where grids are fitted inside the column walk (methods/obs.py):
- per channel: once, on the layer's weights before the walk (as the references do);
- groups: when the walk reaches a group's first column, on its current weights (the errors of the
  columns before it included), as GPTQ does;
- groups with act-order: the walk visits columns by decreasing Hessian diagonal, and each contiguous
  group's grid is fitted on the weights before the walk ("static groups"; compressed-tensors'
  `actorder: weight`), so the checkpoint needs no column permutation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.base.lazy import lazy

torch = lazy("torch")

NO_QUANTIZATION = 16  # wbits meaning "leave the weights in floating point"
BITS = range(2, 9)
DEFAULT_GROUP_SIZE = 128


@dataclass(frozen=True)
class QuantSpec:
    """How a layer's kept weights are quantized."""

    bits: int
    group_size: int = DEFAULT_GROUP_SIZE  # 0: one grid per output row
    sym: bool = False
    act_order: bool = False

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def groups(self, in_features: int) -> int:
        return in_features // self.group_size if self.group_size else 1

    def text(self) -> str:
        """'w4 g128' or 'w4 per-channel': what leaderboards and labels show beside the sparsity."""
        return f"w{self.bits} " + (f"g{self.group_size}" if self.group_size else "per-channel")


@dataclass
class QuantGrid:
    """One layer's grids: scale float32 [out, groups] (bfloat16-exact values), zero uint8 [out, groups] in
    0..maxq. Column j of the weight uses group j // group_size (group 0 for per channel)."""

    spec: QuantSpec
    scale: torch.Tensor
    zero: torch.Tensor

    def expand(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """scale and zero broadcast to every column: [out, in] each, float32."""
        width = self.spec.group_size or in_features
        return (self.scale.repeat_interleave(width, dim=1), self.zero.float().repeat_interleave(width, dim=1))

    def integers(self, weight: torch.Tensor) -> torch.Tensor:
        """The grid levels q (int16 [out, in], 0..maxq) of weights that lie on this grid."""
        scale, zero = self.expand(weight.shape[1])
        q = torch.round(weight.float() / scale) + zero
        return q.clamp(0, self.spec.maxq).to(torch.int16)

    def rows_moved(self, rows: torch.Tensor, order: torch.Tensor) -> QuantGrid:
        """The grids of the weight once its row rows[j] took the old row rows[order[j]] (a producer's rows
        permuted to absorb its consumer's channel permutation, models/absorb.py)."""
        scale, zero = self.scale.clone(), self.zero.clone()
        scale[rows], zero[rows] = self.scale[rows[order]], self.zero[rows[order]]
        return QuantGrid(self.spec, scale, zero)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """scale * (q - zero), float32 [out, in] (exact: bfloat16 scale times an integer below 2^8)."""
        scale, zero = self.expand(q.shape[1])
        return scale * (q.float() - zero)


def check_group_size(in_features: int, group_size: int) -> None:
    """Raise ZpruneUsageError unless `group_size` columns tile the input width exactly."""
    if group_size and in_features % group_size:
        raise ZpruneUsageError(
            f"--group-size {group_size} does not divide the input width {in_features}; choose a divisor "
            f"(e.g. {_divisor_hint(in_features, group_size)}) or 0 for one grid per output channel"
        )


def _divisor_hint(width: int, group_size: int) -> int:
    """The largest power of two at most `group_size` that divides `width` (1 at worst)."""
    size = 1 << int(math.log2(max(group_size, 1)))
    while width % size:
        size //= 2
    return size


def bf16_ceil(x: torch.Tensor) -> torch.Tensor:
    """Positive float32 values rounded up to the nearest bfloat16 value (returned as float32)."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0xFFFF) & ~0xFFFF).view(torch.float32)


def fit(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """One grid per row of x [rows, cols]: (scale [rows] float32, zero [rows] float32, an integer)."""
    x = x.float()
    xmin = x.min(dim=1).values.clamp(max=0)
    xmax = x.max(dim=1).values.clamp(min=0)
    if spec.sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -1.0, xmin)
    xmax = torch.where(empty, 1.0, xmax)
    scale = bf16_ceil((xmax - xmin) / spec.maxq)
    if spec.sym:
        zero = torch.full_like(scale, (spec.maxq + 1) // 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, spec.maxq)
    return scale, zero


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """x on its grid: scale * (clamp(round(x / scale) + zero, 0, maxq) - zero); shapes broadcast."""
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class ColumnQuantizer:
    """Quantizes one layer's columns in the order an OBS / GPTQ walk visits them, fitting grids as it goes.

    `order` [in] lists the original column of each walk position (None: the natural order). Call
    `start(W)` once with the weights before the walk, then `column(W1t, i, c, w)` for walk position c
    (W1t: the current block's weights transposed, [b, out], i: c's position in it); `grid()` at the end.

    `column` runs once per column of every layer, so it does the least per call: grids are held transposed
    ([groups, out], a group's scales one contiguous row), each walk position's group is looked up in a Python
    list made once, and the rounding is done in place on one buffer, four operations: round(w / scale) clamped
    to [-zero, maxq - zero] (bounds kept beside each grid), times scale. Every value there is a small integer,
    exact in float32, so this equals `quantize`'s clamp(round(w / scale) + zero, 0, maxq) - zero to the bit
    (up to the sign of a zero). At SmolLM2's widths (576 columns) the per-call work is what joint quantization
    adds to SparseGPT's walk (tests/benchmarks/RESULTS.md).
    """

    def __init__(self, spec: QuantSpec, rows: int, columns: int, order: torch.Tensor | None = None):
        check_group_size(columns, spec.group_size)
        self.spec, self.order = spec, order
        groups = spec.groups(columns)
        self.scale_t = torch.zeros(groups, rows)  # [groups, out]
        self.zero_t = torch.zeros(groups, rows)
        self.low_t, self.high_t = torch.zeros(groups, rows), torch.zeros(groups, rows)  # -zero, maxq - zero
        self.static = spec.group_size == 0 or order is not None  # every grid fitted before the walk
        g = spec.group_size
        positions = range(columns) if order is None else order.tolist()
        self.group_of = [p // g if g else 0 for p in positions]  # walk position -> its grid's row in scale_t

    def start(self, W: torch.Tensor) -> None:
        """Fit the grids that do not follow the walk, on W [out, in] in the original column order."""
        for name in ("scale_t", "zero_t", "low_t", "high_t"):
            setattr(self, name, getattr(self, name).to(W.device))
        # each grid's rows as views made once (fits write into them): no indexing per column
        self.rows = list(zip(self.scale_t, self.low_t, self.high_t))
        if not self.static:
            return
        width = self.spec.group_size or W.shape[1]
        for g in range(self.scale_t.shape[0]):
            self._set(g, W[:, g * width : (g + 1) * width])

    def _set(self, g: int, x: torch.Tensor) -> None:
        """Fit grid row g on x [out, cols]."""
        self.scale_t[g], self.zero_t[g] = fit(x, self.spec)
        torch.neg(self.zero_t[g], out=self.low_t[g])
        torch.add(self.low_t[g], self.spec.maxq, out=self.high_t[g])

    def column(self, W1t: torch.Tensor, i: int, c: int, w: torch.Tensor) -> torch.Tensor:
        """Walk position c (row i of the block's transpose W1t [b, out]) quantized: w [out] -> a new [out]."""
        g = self.spec.group_size
        if not self.static and c % g == 0:  # a group starts: fit it on its current (updated) weights
            self._set(c // g, W1t[i : i + g].T)
        scale, low, high = self.rows[self.group_of[c]]
        q = torch.div(w, scale)  # quantize(w, scale, zero, maxq), in place on one buffer
        return q.round_().clamp_(low, high).mul_(scale)

    def grid(self) -> QuantGrid:
        return QuantGrid(self.spec, self.scale_t.T.contiguous().cpu(), self.zero_t.T.cpu().to(torch.uint8))


def act_order(hessian_diagonal: torch.Tensor) -> torch.Tensor:
    """GPTQ's activation order from diag(H) [in]: columns by decreasing diag(H) (dead inputs count as 1, as the
    walk sets them), ties in column order."""
    diagonal = hessian_diagonal.clone()
    diagonal[diagonal == 0] = 1
    return torch.argsort(diagonal, descending=True, stable=True)


def walk_blocksize(blocksize: int, spec: QuantSpec | None, m: int = 0) -> int:
    """A walk block that holds whole N:M groups and, where grids are fitted during the walk (groups without
    act-order), whole quantization groups (a grid is fitted on the block's updated weights): the largest
    multiple of lcm(group, m) not above `blocksize` (at least one such unit)."""
    group = spec.group_size if spec is not None and not spec.act_order else 0
    unit = math.lcm(group or 1, m or 1)
    return max(unit, blocksize - blocksize % unit)


def quantization_work_bytes(spec: QuantSpec, out: int, width: int, joint: bool) -> int:
    """Bytes quantizing one [out, width] layer holds beside what its method holds, for --dry-run: the grids
    (float32 scales and zero points), and for GPTQ after a fixed mask a whole OBS walk of its own (the float32
    weight walked and its mask, H and the walk's own copy of it, methods/obs.py). SparseGPT's joint walk
    quantizes inside the walk it makes anyway: the grids alone. Act-order reorders the walk's H: one more
    [in, in] matrix while it is copied."""
    grids = 2 * 4 * out * spec.groups(width) + (width * width * 4 if spec.act_order else 0)
    return grids if joint else grids + out * width * (4 + 1) + 2 * width * width * 4
