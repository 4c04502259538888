"""How fast this machine computes now, measured in a fraction of a second, for --dry-run's time estimate.

Two rates, because a CPU runs them at very different speeds per element:
- a decoder block's FLOP/s: 128 tokens through a block of the model's width (capped at 1024; heads of 64,
  a gated MLP as wide, relative to it, as the model's widest input) in the run dtype on the run device,
  with the float64 sums calibration takes of each input. A bare square product runs several times faster
  than a block does (on 2 cores a 256 x 1024 x 1024 product reached 170 GFLOP/s where SmolLM2's calibration
  ran its blocks at 35-46): norms, the softmax, the activation and the statistics are not products but
  take their time all the same;
- the pruning loop's work per weight for a score method (engine/pipeline.py): the finite checks of the weight and
  of the result, the weight in float32, a score (|W| x a norm per input), the row's lowest half selected,
  the zeros written, the weight copied back and its zeros counted (weights/s).
Each is the average over repeated calls after a warm-up, measured anew every time: a machine's load changes,
and the estimate is for a run started now (on a loaded machine it follows the load of that moment).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from zprune_cli.base.lazy import lazy
from zprune_cli.base.masks import Pattern, select_prune_mask

torch = lazy("torch")

TOKENS, MAX_WIDTH, HEAD = 128, 1024, 64
LAYER = (256, 1024)  # [out, in] of the layer the pruning loop is timed on
BUDGET_S = 0.05  # per rate: repeat until this long has passed (at least two calls)


@dataclass(frozen=True)
class Throughput:
    flops_per_s: float  # decoder-block arithmetic
    selected_per_s: float  # weights scored and selected
    device: str
    dtype: str

    def seconds(self, flops: float, selected: float) -> float:
        return flops / self.flops_per_s + selected / self.selected_per_s


def measure_throughput(device: torch.device, dtype: torch.dtype, hidden: int = 576, widest: int = 1536) -> Throughput:
    """This machine's rates for a model of width `hidden` whose widest projection input is `widest`."""
    width = max(HEAD, min(hidden, MAX_WIDTH) // HEAD * HEAD)
    inner = max(width, round(width * widest / max(hidden, 1)))
    flops = _rate(_block(width, inner, device, dtype), 2 * (4 * width**2 + 3 * width * inner) * TOKENS + 4 * TOKENS**2 * width)
    return Throughput(flops, _rate(_pruning_loop(device, dtype), LAYER[0] * LAYER[1]), str(device), str(dtype).removeprefix("torch."))


def _block(width: int, inner: int, device: torch.device, dtype: torch.dtype) -> Callable[[], float]:
    """One pre-norm decoder block (attention with a causal mask, gated MLP) on random weights."""
    generator = torch.Generator().manual_seed(0)

    def random(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) / shape[-1] ** 0.5).to(device=device, dtype=dtype)

    x, (q, k, v, o), (gate, up), down = random(TOKENS, width), [random(width, width) for _ in range(4)], \
        [random(inner, width) for _ in range(2)], random(width, inner)
    causal = torch.full((TOKENS, TOKENS), float("-inf"), device=device).triu(1)

    def stats(t: torch.Tensor) -> None:  # calibration's sums of each input, in float64
        t.double().square().sum(0), t.double().sum(0)

    def run() -> float:
        h = x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + 1e-6).to(dtype)
        stats(h)
        heads = [(h @ w.T).reshape(TOKENS, -1, HEAD).transpose(0, 1) for w in (q, k, v)]  # [heads, T, 64]
        scores = (heads[0] @ heads[1].transpose(1, 2)).float() / HEAD**0.5 + causal
        attended = (scores.softmax(-1).to(dtype) @ heads[2]).transpose(0, 1).reshape(TOKENS, width)
        stats(attended)
        h = x + attended @ o.T
        m = h * torch.rsqrt(h.float().square().mean(-1, keepdim=True) + 1e-6).to(dtype)
        stats(m)
        inside = torch.nn.functional.silu(m @ gate.T) * (m @ up.T)
        stats(inside)
        return float((h + inside @ down.T)[0, 0])

    return run


def _pruning_loop(device: torch.device, dtype: torch.dtype) -> Callable[[], float]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(LAYER, generator=generator).to(device=device, dtype=dtype)
    pruned = torch.empty_like(weight)  # written, never read back: the dense weight stays free of ties
    sumsq = torch.rand(LAYER[1], generator=generator).to(device)
    unstructured = Pattern.parse("unstructured")

    def prune_layer() -> float:
        assert bool(torch.isfinite(weight).all()) and bool(torch.isfinite(sumsq).all())
        w32 = weight.to(torch.float32)
        mask = select_prune_mask(w32.abs() * sumsq.sqrt().reshape(1, -1), 0.5, "row", unstructured)
        new = weight.masked_fill(mask, 0)
        assert bool(torch.isfinite(new).all())
        pruned.copy_(new)
        return float(torch.count_nonzero(pruned))

    return prune_layer


def _rate(run: Callable[[], float], work: float) -> float:
    """Work per second of `run` over repeated calls (it returns a value, so a device finishes it before the
    clock stops). The average, not the fastest call: on a shared machine a run gets the processor as these
    calls do, not as the luckiest one did."""
    run()  # warm-up: first-call allocations and kernel selection
    calls, started = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - started < BUDGET_S:
        run()
        calls += 1
    return work * calls / (time.perf_counter() - started)
