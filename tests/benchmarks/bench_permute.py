"""Benchmark: time of --permute's searches on 7B-shaped layers (LLaMA-2-7B: 4096 x 4096 for q/k/v/o,
11008 x 4096 for gate/up, 4096 x 11008 for down_proj), against one score method's prune of the same layer.

Scores are |W| x ||X|| of random normal weights and log-normal input norms (outlier channels), seeded. Each
shape is timed once per step (a permutation search on a 7B layer takes seconds to minutes on this CPU):
wanda's 2:4 mask of the layer (the score method's prune), the heuristic, and the LSA refinement under the
default work bound (methods.permutation.LSA_WORK). The kept score of each order is printed, so the gain is
seen beside its cost.

    python tests/benchmarks/bench_permute.py [--threads 1] [--shapes 4096x4096,4096x11008,11008x4096]
"""

from __future__ import annotations

import argparse
import time

from _bench import library_state  # noqa: E402  (sets offline env first)

import torch  # noqa: E402

from zprune_cli.base.masks import Pattern  # noqa: E402
from zprune_cli.methods import get_method  # noqa: E402
from zprune_cli.methods.permutation import LSA_WORK, heuristic_order, kept_score, lsa_refine  # noqa: E402
from zprune_cli.stats.types import LayerStats  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def one_shape(rows: int, cols: int, pattern: Pattern) -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, cols, generator=g)
    sumsq = (torch.randn(cols, generator=g) * 1.5).exp().square() * 100
    stats = LayerStats(sumsq, 100)
    wanda = get_method("wanda")
    _, prune_s = timed(lambda: wanda.prune(weight, stats, 0.5, pattern, "row"))
    scores = wanda.score(weight, stats)  # |W| x ||X||
    order, heuristic_s = timed(lambda: heuristic_order(scores, pattern.m))
    refined, lsa_s = timed(lambda: lsa_refine(scores, order, pattern))
    base = kept_score(scores, pattern)
    print(f"{rows}x{cols} {pattern}: wanda prune {prune_s:.2f} s; heuristic {heuristic_s:.2f} s "
          f"({heuristic_s / prune_s:.2f}x the prune), kept {kept_score(scores[:, order], pattern) / base - 1:+.3%}; "
          f"lsa {lsa_s:.1f} s ({lsa_s / prune_s:.0f}x), kept {kept_score(scores[:, refined], pattern) / base - 1:+.3%}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096")
    parser.add_argument("--pattern", default="2:4")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(library_state(), f"threads {torch.get_num_threads()}, LSA_WORK {LSA_WORK}", flush=True)
    for shape in args.shapes.split(","):
        rows, cols = (int(v) for v in shape.split("x"))
        one_shape(rows, cols, Pattern.parse(args.pattern))
    print(library_state(), flush=True)


if __name__ == "__main__":
    main()
