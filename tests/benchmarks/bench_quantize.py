"""Benchmark: what joint quantization (--wbits) adds to a layer's prune, side by side in one run.

On the same weight and Gram (random, heavy-tailed and correlated inputs as bench_layer_solvers.py makes them),
one thread, each layer:
- SparseGPT alone vs SparseGPT with --wbits 4 (quantized inside the same column walk), the issue's goal being
  at most 1.2x;
- wanda alone vs wanda + --wbits 4 (the mask first, then GPTQ on the kept weights: a whole OBS walk that the
  score method alone never does, so this ratio is large by construction; GPTQ's time is stated beside it).
Per-channel grids (group 0) are timed too. `--reps` alternates which runs first; medians.

Shapes (out x in): SmolLM2-135M's (576 x 576 q/o, 1536 x 576 gate/up, 576 x 1536 down; --group-size 64, as 128
does not divide 576) and Llama-2-7B's 4096 x 4096 (group 128); add 4096x11008 for down_proj (minutes a run).

    python tests/benchmarks/bench_quantize.py [--shapes 576x576:64,1536x576:64,576x1536:64,4096x4096:128] [--reps 3]

`--clock cpu` times each call by this process's CPU seconds instead of the wall clock: on a machine shared with
other jobs a run that waits for a core is not charged for the wait (one thread, so CPU seconds are the work).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

from _bench import library_state  # noqa: F401  (sets offline env first)

import torch  # noqa: E402
from bench_layer_solvers import activations_gram  # noqa: E402

from zprune_cli.base.masks import Pattern  # noqa: E402
from zprune_cli.methods import get_method  # noqa: E402
from zprune_cli.methods.obs import gptq  # noqa: E402
from zprune_cli.methods.quantize import QuantSpec  # noqa: E402
from zprune_cli.stats.types import LayerStats  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="576x576:64,1536x576:64,576x1536:64,4096x4096:128",
                   help="out x in : group size, comma-separated")
    p.add_argument("--pattern", default="0.5", help="0.5 (unstructured) or n:m")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall seconds, or this process's CPU seconds")
    return p.parse_args(argv)


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def seconds(fn, clock=time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def runs(W0: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern, group: int) -> dict:
    """name -> a callable doing that prune once."""
    sparsegpt, wanda = get_method("sparsegpt"), get_method("wanda")
    w4, w4pc = QuantSpec(4, group), QuantSpec(4, 0)

    def wanda_gptq(spec):
        result = wanda.prune(W0, stats, sparsity, pattern, "row")
        return gptq(result.weight, stats.hessian(), result.prune_mask, spec)

    return {
        "sparsegpt": lambda: sparsegpt.prune(W0, stats, sparsity, pattern),
        "sparsegpt w4": lambda: sparsegpt.prune(W0, stats, sparsity, pattern, quant=w4),
        "sparsegpt w4 per-channel": lambda: sparsegpt.prune(W0, stats, sparsity, pattern, quant=w4pc),
        "wanda": lambda: wanda.prune(W0, stats, sparsity, pattern, "row"),
        "wanda w4": lambda: wanda_gptq(w4),
    }


def one_shape(args, out: int, width: int, group: int) -> dict:
    gram = activations_gram(width, args.tokens)
    stats = LayerStats(sumsq=gram.diagonal().double().clone(), n_tokens=args.tokens, gram=gram)
    W0 = torch.randn(out, width, generator=torch.Generator().manual_seed(1)) / math.sqrt(width)
    pattern, sparsity = (Pattern.parse(args.pattern), 0.5) if ":" in args.pattern else (Pattern(), float(args.pattern))
    calls = runs(W0, stats, sparsity, pattern, group)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for rep in range(args.reps):
        names = list(calls) if rep % 2 == 0 else list(reversed(calls))
        for name in names:
            times[name].append(seconds(calls[name], CLOCK[args.clock]))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{out}x{width} g{group}: " + ", ".join(f"{n} {s:.3f} s" for n, s in median.items())
          + f" (load average {os.getloadavg()[0]:.2f})", flush=True)
    return median


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{library_state()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), pattern {args.pattern}, "
          f"tokens {args.tokens}, reps {args.reps}, {args.clock} clock, load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for shape in args.shapes.split(","):
        dims, _, group = shape.partition(":")
        out, width = (int(v) for v in dims.split("x"))
        rows.append((f"{out}x{width}", int(group or 128), one_shape(args, out, width, int(group or 128))))
    print("\n| layer (out x in) | group | sparsegpt | + w4 | ratio | + w4 per-channel | ratio | wanda | + w4 (GPTQ) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape, group, m in rows:
        base = m["sparsegpt"]
        print(f"| {shape} | {group} | {base:.3f} s | {m['sparsegpt w4']:.3f} s | {m['sparsegpt w4'] / base:.2f}x | "
              f"{m['sparsegpt w4 per-channel']:.3f} s | {m['sparsegpt w4 per-channel'] / base:.2f}x | "
              f"{m['wanda']:.3f} s | {m['wanda w4']:.3f} s |")
    print(f"at the end: {library_state()}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
