"""Benchmark: what pruning fused MoE experts expert by expert costs, against leaving them dense.

A random Mixtral (default: hidden 512, 8 experts of intermediate 1024, top-2, 4 blocks) is written to disk
once, then calibrated on C4 and pruned with Wanda 50% in one process, alternating two ways, each round with
a fresh statistics cache:
- experts: each expert's slice of the fused tensors is a layer, with statistics from its routed tokens
  (transformers' eager expert loop runs under zprune's watch during calibration);
- dense: the same model with zprune's expert discovery switched off (as before experts were pruned), so
  it leaves them dense and the model runs its default experts implementation (grouped_mm) throughout.
It prints the wall time of calibrate + prune for each way (best of the rounds), their ratio, and the share
of the blocks' weights each way prunes.

    python tests/benchmarks/bench_moe.py
    python tests/benchmarks/bench_moe.py --hidden 256 --intermediate 512 --blocks 2 --rounds 1   # quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from _bench import C4, library_state

from zprune_cli.models import blocks as blocks_module
from zprune_cli.models.blocks import find_blocks
from zprune_cli.models.handle import ModelHandle
from zprune_cli.verbs.pruning import prune
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import Calibration, Settings


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--nsamples", "-n", type=int, default=16)
    p.add_argument("--seqlen", "-l", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    return p.parse_args(argv)


def write_model(args, folder: Path) -> Path:
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import byte_tokenizer  # the tests' offline byte-level tokenizer

    torch.manual_seed(0)
    config = MixtralConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.blocks,
                           num_attention_heads=8, num_key_value_heads=4, num_local_experts=args.experts,
                           num_experts_per_tok=2, vocab_size=260, max_position_embeddings=4096)
    MixtralForCausalLM(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)  # loads offline
    return folder


def one_run(folder: Path, args, experts: bool, cache: Path) -> tuple[float, float]:
    """(seconds for calibrate + prune, share of all block weights that are zero afterwards)."""
    settings = Settings(cache_dir=cache)
    handle = ModelHandle.of(str(folder), settings)
    started = time.perf_counter()
    with mock.patch.object(blocks_module, "expert_slices", blocks_module.expert_slices if experts else lambda m: {}):
        prune(handle, PruneRecipe("wanda", 0.5), calibration=Calibration(str(C4), args.nsamples, args.seqlen, 0),
              settings=settings)  # dense: zprune finds no expert layers, as before they were pruned
    seconds = time.perf_counter() - started
    _, blocks = find_blocks(handle.model)
    weights = [p for b in blocks for p in b.parameters() if p.dim() >= 2]
    zeros = sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)
    return seconds, zeros


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="zprune-moe-") as tmp:
        folder = write_model(args, Path(tmp) / "mixtral")
        params = sum(p.numel() for p in ModelHandle(str(folder)).model.parameters())
        print(f"{library_state()}; random Mixtral {params / 1e6:.1f} M parameters, {args.blocks} blocks, "
              f"{args.experts} experts (top-2); Wanda 50% on C4 {args.nsamples} x {args.seqlen}, one thread")
        best = {True: float("inf"), False: float("inf")}
        share = {}
        for r in range(args.rounds):
            for experts in (True, False):
                seconds, zeros = one_run(folder, args, experts, Path(tmp) / f"cache-{r}-{experts}")
                best[experts], share[experts] = min(best[experts], seconds), zeros
        for experts in (True, False):
            print(f"  {'experts pruned' if experts else 'experts dense '}: {best[experts]:6.1f} s, "
                  f"{share[experts]:.1%} of the blocks' weights zero")
        print(f"  time ratio experts / dense: {best[True] / best[False]:.2f}x")


if __name__ == "__main__":
    main()
