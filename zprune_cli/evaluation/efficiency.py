"""Size and speed: sparsity of the pruned Linear layers, parameter counts, bytes on disk, forward throughput,
and the speed-up of 2:4 semi-structured sparse kernels where the hardware has them.

The layers counted are the projections (`nn.Linear`, GPT-2's `Conv1D`) inside the decoder blocks, found
generically (`models.blocks`), the same layers the pruner touches; embeddings, norms and the LM head stay
dense and are not counted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.lazy import lazy
from zprune_cli.evaluation.perplexity import model_device
from zprune_cli.models.blocks import block_linears, counted_layers, is_transposed, weight_view
from zprune_cli.base.sparsity import SparsityCount, count_zeros, nm_violation

torch = lazy("torch")
nn = lazy("torch.nn")
experts = lazy("zprune_cli.models.experts")

# dtypes torch's semi-structured (2:4) sparse kernels accept for the weight
_SEMI_STRUCTURED_DTYPES = ("float16", "bfloat16")  # torch's names


def measure_sparsity(model: nn.Module, layer_names: list[str] | None = None) -> SparsityCount:
    """sparsity.count_zeros over the named layers (the pruned ones), default every Linear in the blocks."""
    return count_zeros(counted_layers(model, layer_names))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: all parameters (tied ones once), their non-zeros, and the block Linear weights'."""
    with torch.no_grad():
        params = list(model.parameters())  # nn.Module.parameters() yields a shared tensor once
        total = sum(p.numel() for p in params)
        nonzero = sum(int(torch.count_nonzero(p).item()) for p in params)
        linear = [m.weight for m in block_linears(model).values()]
        return {
            "total": total,
            "nonzero": nonzero,
            "block_linear": sum(w.numel() for w in linear),
            "block_linear_nonzero": sum(int(torch.count_nonzero(w).item()) for w in linear),
        }


def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of a file, or of all files under a folder (symlinks followed to the files they point at)."""
    root = Path(path)
    if root.is_file():
        return root.stat().st_size
    if not root.is_dir():
        raise ZpruneError(f"no such file or folder: {root}")
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _vocab_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if size is None:
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        size = getattr(embeddings, "num_embeddings", None)
    if not size:
        raise ZpruneError(f"cannot tell the vocabulary size of {type(model).__name__}")
    return int(size)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_forwards(model: nn.Module, ids: torch.Tensor, n_iters: int) -> float:
    """Seconds for n_iters forward passes on ids, after one warm-up pass."""
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)  # warm-up: kernels, allocator, caches
        _synchronize(ids.device)
        start = time.perf_counter()
        for _ in range(n_iters):
            model(input_ids=ids, use_cache=False)
        _synchronize(ids.device)
        return time.perf_counter() - start


def throughput(
    model: nn.Module,
    seqlen: int,
    batch_size: int = 1,
    n_iters: int = 3,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> float:
    """Forward-pass tokens per second on random token ids [batch_size, seqlen] (one warm-up pass, not timed).

    device defaults to the model's device; the model is not moved.
    """
    if seqlen < 1 or batch_size < 1 or n_iters < 1:
        raise ZpruneUsageError("seqlen, batch_size and n_iters must be at least 1")
    device = torch.device(device) if device is not None else model_device(model)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, _vocab_size(model), (batch_size, seqlen), generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        seconds = _timed_forwards(model, ids, n_iters)
    finally:
        model.train(was_training)
    return batch_size * seqlen * n_iters / seconds


def is_2_4(weight: torch.Tensor) -> bool:
    """True when every group of 4 consecutive inputs in every row holds at least 2 zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return nm_violation(weight.detach(), 2, 4) is None


def semi_structured_speedup(
    model: nn.Module,
    seqlen: int = 2048,
    batch_size: int = 1,
    n_iters: int = 3,
    layer_names: list[str] | None = None,
) -> dict[str, Any] | str:
    """Tokens/s with torch's 2:4 semi-structured sparse kernels on the pruned Linear weights versus dense.

    Needs CUDA, fp16/bf16 weights, and every layer (layer_names, default every Linear in the decoder blocks)
    2:4 sparse. Otherwise returns a one-line string saying why the measurement is unavailable. The model's
    dense weights are put back before returning.
    """
    device = model_device(model)
    layers = counted_layers(model, layer_names)
    if not layers:
        return "semi-structured 2:4 speed-up unavailable: no Linear layers to convert"

    reasons = []
    if device.type != "cuda" or not torch.cuda.is_available():
        reasons.append(f"it needs a CUDA device (the model is on {device.type})")
    dtypes = {str(m.weight.dtype).removeprefix("torch.") for m in layers.values()}
    if not dtypes <= set(_SEMI_STRUCTURED_DTYPES):
        names = ", ".join(sorted(dtypes))
        reasons.append(f"it needs float16 or bfloat16 weights (the model has {names})")
    not_24 = [name for name, m in layers.items() if not is_2_4(weight_view(m))]
    fused = [name for name, m in layers.items() if isinstance(m, experts.ExpertSlice)]
    transposed = [name for name, m in layers.items() if is_transposed(m) and name not in fused]
    if fused:  # one tensor holds every expert, multiplied by the experts module's own kernels
        reasons.append(f"{len(fused)} layers are experts fused into one tensor (first: {fused[0]})")
    if transposed:  # Conv1D multiplies with addmm on its [in, out] weight; the kernels need an F.linear layer
        reasons.append(f"{len(transposed)} layers store their weight as [in, out] (Conv1D, first: {transposed[0]})")
    if not_24:
        reasons.append(f"{len(not_24)} of {len(layers)} layers are not 2:4 sparse (first: {not_24[0]})")
    if reasons:
        return "semi-structured 2:4 speed-up unavailable: " + "; ".join(reasons)

    from torch.sparse import to_sparse_semi_structured

    dense_tps = throughput(model, seqlen, batch_size, n_iters)
    originals = {name: m.weight for name, m in layers.items()}
    try:
        for module in layers.values():
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
        sparse_tps = throughput(model, seqlen, batch_size, n_iters)
    except (RuntimeError, ValueError) as e:  # shape or GPU constraints of the kernels
        first_line = (str(e).strip().splitlines() or [""])[0]
        return f"semi-structured 2:4 speed-up unavailable: the kernels failed on this model: {first_line}"
    finally:
        for name, module in layers.items():
            module.weight = originals[name]
    return {
        "dense_tokens_per_s": dense_tps,
        "sparse_tokens_per_s": sparse_tps,
        "speedup": sparse_tps / dense_tps,
        "n_layers": len(layers),
        "seqlen": seqlen,
        "batch_size": batch_size,
    }
