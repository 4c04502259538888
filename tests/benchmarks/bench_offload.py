"""Benchmark: peak resident memory and wall time of calibrate + prune, in memory against `--offload disk`.

A random Llama (default about 3 B parameters: hidden 3072, 26 blocks, intermediate 8192, vocab 32000) is
written once to disk in bfloat16 by this script, then pruned with Wanda 50% (dense statistics, a short
calibration: the point is memory, not quality) twice, each in a fresh process with a fresh cache: the whole
model in float32 memory, and `--offload disk`. Each process reports its own peak resident memory (VmHWM,
read at exit). The model's float32 size is printed beside, so the offloaded peak reads as a share of it.

    python tests/benchmarks/bench_offload.py                     # ~3 B parameters, ~6 GB on disk
    python tests/benchmarks/bench_offload.py --hidden 1024 --blocks 8 --intermediate 2816   # a quick check
    python tests/benchmarks/bench_offload.py --model smollm2-135m --data C4 -n 32 -l 512   # a real model
    python tests/benchmarks/bench_offload.py --eval-windows 8    # and `zprune eval` of the pruned model, block by block

`--model` takes a model alias (written to safetensors in bfloat16 first: `--offload disk` reads
safetensors, not GGUF) or a folder of safetensors; `--data` a calibration text file (C4: the shared shard).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import C4, REPO, RUN_ZPRUNE, library_state

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=3072)
    p.add_argument("--blocks", type=int, default=26)
    p.add_argument("--intermediate", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--nsamples", "-n", type=int, default=2)
    p.add_argument("--seqlen", "-l", type=int, default=64)
    p.add_argument("--model", default=None, help="a model alias or safetensors folder instead of the random Llama")
    p.add_argument("--data", default=None, help="calibration text file (C4: the shared C4 shard; default: a repeated sentence)")
    p.add_argument("--work", type=Path, default=None, help="folder for the model and outputs (default: a temporary one)")
    p.add_argument("--modes", default="disk,none", help="offload modes to run, in order")
    p.add_argument("--eval-windows", type=int, default=0,
                   help="then `zprune eval` the pruned model in the same mode on this many windows of the calibration text")
    return p.parse_args(argv)


def write_model(args: argparse.Namespace, folder: Path) -> int:
    """A random Llama saved as bfloat16 safetensors shards, built block by block in bfloat16 (never fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.blocks,
                         num_attention_heads=args.hidden // 128, num_key_value_heads=args.hidden // 128,
                         vocab_size=args.vocab, max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bfloat16 directly: a 3 B model never exists in float32 here
    model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, max_shard_size="2GB")
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import byte_tokenizer  # every byte one token: enough to feed text through

    byte_tokenizer().save_pretrained(folder)
    del model
    return params


def write_alias(alias: str, folder: Path) -> int:
    """A model alias (e.g. the GGUF SmolLM2) saved as bfloat16 safetensors, as `prune` saves its outputs."""
    import torch

    from zprune_cli.models.handle import ModelHandle
    from zprune_cli.models.save import save_model

    handle = ModelHandle(alias, "cpu", "float32")
    params = sum(p.numel() for p in handle.model.parameters())
    save_model(handle.model, handle.tokenizer, folder, dtype=torch.bfloat16)
    return params


def run(folder: Path, text: Path, mode: str, args: argparse.Namespace, work: Path) -> dict:
    """Wall seconds and peak resident KiB of one `zprune prune` process (and of one `zprune eval` of its output)."""
    out = work / f"out-{mode}"
    prune = ["prune", str(folder), "--method", "wanda", "--sparsity", "0.5", "--data", str(text), "-n", str(args.nsamples),
             "-l", str(args.seqlen), "--out", str(out), "--overwrite"]
    measured = {"prune": zprune(prune, mode, work)}
    if args.eval_windows:
        measured["eval"] = zprune(["eval", str(out), "--eval", str(text), "--eval-seqlen", str(args.seqlen),
                                   "--max-windows", str(args.eval_windows)], mode, work)
    shutil.rmtree(out, ignore_errors=True)
    return measured


def zprune(arguments: list[str], mode: str, work: Path) -> tuple[float, int]:
    """(wall seconds, peak resident KiB) of one zprune process in offload `mode`, in a fresh process."""
    hwm = work / f"hwm-{mode}"
    env = {**os.environ, "ZPRUNE_HOME": str(work / f"cache-{mode}"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2",
           "HWM_FILE": str(hwm)}
    command = [sys.executable, "-c", RUN_ZPRUNE, *arguments, "--offload", mode, "--dtype", "float32", "--quiet", "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{arguments[0]} {mode}: exit {done.returncode}: {done.stderr[-2000:]}")
    return seconds, int(hwm.read_text())  # KiB, written by the process itself at exit (see _bench.HWM)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="zprune-bench-offload-"))
    folder, text = work / "model", work / "text.txt"
    if args.data:
        text = C4 if args.data == "C4" else Path(args.data)
    else:
        text.write_text(("The quick brown fox jumps over the lazy dog while the model is pruned. " * 400))
    started = time.perf_counter()
    if args.model and Path(args.model).is_dir():
        folder, params = Path(args.model), None
    elif not (folder / "config.json").exists():
        params = write_alias(args.model, folder) if args.model else write_model(args, folder)
    else:
        params = None
    disk = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    print(f"{library_state()}; model written in {time.perf_counter() - started:.0f} s: "
          f"{params or 'existing'} parameters, {disk / 2**30:.2f} GiB bfloat16 on disk, float32 size "
          f"{2 * disk / 2**30:.2f} GiB; calibration {args.nsamples} x {args.seqlen}", flush=True)
    rows = []
    for mode in args.modes.split(","):
        for step, (seconds, peak) in run(folder, text, mode, args, work).items():
            rows.append({"step": step, "offload": mode, "seconds": round(seconds, 1), "peak_rss_gib": round(peak / 2**20, 3),
                         "share_of_fp32_model": round(peak * 1024 / (2 * disk), 3)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| step | offload | wall | peak RSS | share of the fp32 model |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['offload']} | {r['seconds']:.0f} s | {r['peak_rss_gib']:.2f} GiB | {r['share_of_fp32_model']:.0%} |")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
