"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from zprune_cli.base.choices import RECONSTRUCTIONS, REFINEMENTS
from zprune_cli.models.resolve import DEFAULT_MODEL
from zprune_cli.base.settings import Calibration

_CAL = Calibration()

Model = Annotated[str, typer.Argument(help="Hub id (org/name), local HF folder, .gguf file, or alias smollm2-135m / gemma3-270m.")]
Revision = Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit).")]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Run model code from the hub (off by default).")]
Data = Annotated[Optional[str], typer.Option("--data", help=f"Calibration text: c4, wikitext2, ptb, c4-sample (100 C4 documents shipped with zprune), self (sampled from the model), or a .txt/.jsonl/.parquet file (default {_CAL.data}; env ZPRUNE_DATA).")]
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder searched for local copies of named datasets (env ZPRUNE_DATA_DIR).")]
NSamples = Annotated[Optional[int], typer.Option("--nsamples", "-n", help=f"Calibration windows (default {_CAL.nsamples}).")]
Seqlen = Annotated[Optional[int], typer.Option("--seqlen", "-l", help=f"Tokens per calibration window (default {_CAL.seqlen}).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help=f"Seed for drawing calibration windows (default {_CAL.seed}).")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder (env ZPRUNE_HOME; default $XDG_CACHE_HOME/zprune).")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto (cuda if available), cpu, cuda, cuda:N.")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="auto (float32 on CPU, bfloat16 on GPU), float32, float16, bfloat16.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr; no progress bars.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Offload = Annotated[str, typer.Option("--offload", help="none; cpu: keep the decoder blocks in host memory and copy each to the device while it runs (device memory of one block; chosen by itself when a GPU is too small); disk: read each block from the safetensors checkpoint only while it runs (host memory of one block too).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="From the config alone, print the expected peak memory, store size, disk and forward passes; load no weights, write nothing.")]

DEFAULTS = {"model": DEFAULT_MODEL}

# --- the weight-changing options a recipe is built from (prune, and compare's shared cell settings) ---
Scope = Annotated[Optional[str], typer.Option("--scope", help="row or layer: where exact counts are enforced (default: the method's).")]
Allocation = Annotated[Optional[str], typer.Option("--allocation", help="uniform or owl (outlier-weighted per block; overall sparsity stays s).")]
OwlM = Annotated[Optional[float], typer.Option("--owl-m", help="OWL outlier threshold M, x mean score (default 5; only with --allocation owl).")]
OwlLambda = Annotated[Optional[float], typer.Option("--owl-lambda", help="OWL spread lambda (default 0.08; only with --allocation owl).")]
Reconstruct = Annotated[Optional[str], typer.Option("--reconstruct", help="New weights for the method's mask: obs (SparseGPT's update, what --reconstruct alone means) or pcg (exact least squares); none to keep the masked weights.")]
Refine = Annotated[Optional[str], typer.Option("--refine", help="Refine the mask before reconstruction: swaps[:ROUNDS] (Gram-based 1-swaps per row, default 100 rounds) or none.")]
ReconstructAxis = Annotated[Optional[str], typer.Option("--reconstruct", help=f"Comma-separated: {', '.join(RECONSTRUCTIONS)} (each cell with each; --reconstruct alone: obs).")]
RefineAxis = Annotated[Optional[str], typer.Option("--refine", help=f"Comma-separated: {', '.join(REFINEMENTS)}[:ROUNDS] (each cell with each).")]
Permute = Annotated[Optional[str], typer.Option("--permute", help="N:M patterns only: none (default), heuristic or lsa: reorder each layer's input channels before the N:M groups are formed (RIA's channel permutation).")]
PermuteLayout = Annotated[Optional[str], typer.Option("--permute-layout", help="With --permute: native (default): o_proj's permutation kept within each key-value head, so that v_proj absorbs it and o_proj is stored natively N:M; free: every layer's permutation searched over all its columns (better perplexity, as RIA's code), those down_proj's producers cannot take kept N:M only after permutation.")]
PermuteAxis = Annotated[Optional[str], typer.Option("--permute", help="Comma-separated: none, heuristic, lsa (each N:M cell with each; unstructured cells: none).")]
Propagate = Annotated[Optional[str], typer.Option("--propagate", help="auto, dense (stored statistics only) or pruned (papers' protocol).")]
Ignore = Annotated[Optional[list[str]], typer.Option("--ignore", help="Regex of layer names to leave dense (repeatable).")]
MethodOption = Annotated[Optional[list[str]], typer.Option("--option", help="Method option KEY=VALUE, e.g. a=0.5 for ria (repeatable).")]
WBits = Annotated[Optional[int], typer.Option("--wbits", help="Quantize the kept weights to 2..8 bits (GPTQ; with sparsegpt inside its own walk); 16 = none (default).")]
GroupSize = Annotated[Optional[int], typer.Option("--group-size", help="Input columns per quantization grid (default 128; 0 = one grid per output channel). Must divide every layer's input width.")]
Sym = Annotated[Optional[bool], typer.Option("--sym/--asym", help="Symmetric or asymmetric grids (default asymmetric, as SparseGPT's and GPTQ's code).")]
ActOrder = Annotated[Optional[bool], typer.Option("--act-order", help="Quantize columns by decreasing Hessian diagonal (GPTQ's act-order, static groups); not with sparsegpt at N:M.")]
WBitsAxis = Annotated[Optional[str], typer.Option("--wbits", help="Comma-separated bit widths: 16 (none), 2..8 (each cell with each; sparsity 0 with bits: plain GPTQ).")]


def quant_fields(wbits, group_size, sym, act_order) -> dict:
    """The quantization fields of a recipe from their flags (None: not given)."""
    return {"wbits": 16 if wbits is None else wbits, "group_size": group_size, "sym": sym, "act_order": act_order}
