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


def whole_blocks(shape_name: str, pattern: Pattern, mode: str = "heuristic") -> None:
    """What --permute adds to a score method's prune of whole blocks of a named shape (make_checkpoint.SHAPES;
    random weights, two blocks), each through the pipeline's own layer pruner (engine.pipeline._Pruner):
    wanda's plain N:M prune of the block's seven layers, then, on the same weights, --permute's: finding
    (first block) or verifying (later blocks) which producers absorb which consumer, then each layer's
    search, selection and placement."""
    from make_checkpoint import SHAPES
    from transformers import AutoConfig, AutoModelForCausalLM

    from zprune_cli.engine.pipeline import _Pruner
    from zprune_cli.engine.recipe import PruneRecipe
    from zprune_cli.models.blocks import find_blocks, find_linears

    config = AutoConfig.for_model(**{**SHAPES[shape_name].config(), "num_hidden_layers": 2})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    plain = _Pruner(PruneRecipe("wanda", pattern=str(pattern)))
    permuted = _Pruner(PruneRecipe("wanda", pattern=str(pattern), permute=mode), model)
    name, blocks = find_blocks(model)
    for index, block in enumerate(blocks):
        linears, prefix = find_linears(block), f"{name}.{index}."
        stats = {n: LayerStats((torch.randn(lin.in_features, generator=g) * 1.5).exp().square() * 100, 100)
                 for n, lin in linears.items()}
        targets = {prefix + n: 0.5 for n in linears}
        dense = {k: v.clone() for k, v in block.state_dict().items()}
        with torch.inference_mode():
            plain_s = sum(timed(lambda: plain(prefix + n, lin, stats[n], 0.5))[1] for n, lin in linears.items())
            block.load_state_dict(dense)
            _, plan_s = timed(lambda: permuted.start_block(index, block, prefix, linears, targets))
            layers_s = sum(timed(lambda: permuted(prefix + n, lin, stats[n], 0.5))[1] for n, lin in linears.items())
        total = plan_s + layers_s
        print(f"{shape_name} block {index} {pattern}: wanda prune {plain_s:.2f} s; with --permute {mode} {total:.2f} s "
              f"({total / plain_s:.2f}x): producers found/verified {plan_s:.2f} s, layers {layers_s:.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096")
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--mode", default="heuristic", choices=("heuristic", "lsa"), help="with --blocks")
    parser.add_argument("--blocks", default=None, metavar="SHAPE", help="instead: two whole blocks of a make_checkpoint "
                        "shape (e.g. llama-2-7b), the producers' probing and verification included")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(library_state(), f"threads {torch.get_num_threads()}, LSA_WORK {LSA_WORK}", flush=True)
    if args.blocks:
        whole_blocks(args.blocks, Pattern.parse(args.pattern), args.mode)
    for shape in [] if args.blocks else args.shapes.split(","):
        rows, cols = (int(v) for v in shape.split("x"))
        one_shape(rows, cols, Pattern.parse(args.pattern))
    print(library_state(), flush=True)


if __name__ == "__main__":
    main()
