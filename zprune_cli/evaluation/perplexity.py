"""Perplexity over non-overlapping windows of one token stream, the papers' protocol.

The caller joins the test texts, tokenises them once and cuts the stream with `eval_windows`; `perplexity`
then scores every window independently. Each window's first token has no prediction, so a window of L tokens
contributes L - 1 token NLLs. The reference code (SparseGPT, Wanda) takes the mean loss of each window, times
L, sums over windows and divides by n * L; since every window has the same length that equals exp of the mean
token NLL over all predicted tokens, which is what we compute (in fp32, from the model's logits).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.lazy import lazy

torch = lazy("torch")
F = lazy("torch.nn.functional")

# Upper bound on the fp32 logits materialised at once: about 256 MiB.
_CHUNK_ELEMENTS = 1 << 26


@dataclass
class PerplexityResult:
    """One perplexity measurement.

    ppl = exp(nll); nll is the mean token negative log-likelihood in nats; n_windows windows of seqlen tokens
    were scored, giving n_tokens = n_windows * (seqlen - 1) predicted tokens; seconds is the wall time.
    window_nlls: each window's mean token NLL (seqlen - 1 tokens each), in window order: what the interval of
    this perplexity and the paired comparison of two models on the same windows are computed from
    (evaluation/intervals.py).
    """

    ppl: float
    nll: float
    n_windows: int
    n_tokens: int
    seqlen: int
    seconds: float
    window_nlls: list[float] | None = None


def eval_windows(token_ids: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Cut one token stream into floor(T / seqlen) non-overlapping windows; the leftover tail is dropped.

    token_ids: LongTensor [T] (or [1, T], as a tokenizer returns it). Returns LongTensor [n_windows, seqlen].
    """
    if seqlen < 2:
        raise ZpruneUsageError(f"seqlen must be at least 2 (got {seqlen})")
    if token_ids.dim() == 2 and token_ids.shape[0] == 1:
        token_ids = token_ids[0]
    if token_ids.dim() != 1:
        raise ZpruneUsageError(f"expected one token stream of shape [T] or [1, T], got {tuple(token_ids.shape)}")
    total = token_ids.numel()
    n_windows = total // seqlen
    if n_windows == 0:
        raise ZpruneError(f"text too short for one window of {seqlen} tokens (got {total})")
    return token_ids[: n_windows * seqlen].reshape(n_windows, seqlen).long()


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's first parameter is (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def window_nll_sum(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Sum of NLL of ids[1:] given logits[:-1] for one window. logits [L, V] (model dtype), ids [L]."""
    seqlen, vocab = logits.shape
    chunk = max(1, _CHUNK_ELEMENTS // vocab)
    total = 0.0
    for start in range(0, seqlen - 1, chunk):
        stop = min(start + chunk, seqlen - 1)
        # logits at position t predict token t + 1
        piece = logits[start:stop].to(torch.float32)  # [chunk, V]; the log-softmax in float32 whatever the model's dtype
        total += F.cross_entropy(piece, ids[start + 1 : stop + 1], reduction="sum").item()
    return total


def perplexity(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of a causal LM over `windows` (LongTensor [n_windows, seqlen]), windows scored independently.

    batch_size windows go through the model per forward pass; the result does not depend on it. device
    defaults to the device of the model's first parameter (the model is not moved). progress, if given, is
    called with the number of windows done after each batch.
    """
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise ZpruneUsageError(f"windows must be a non-empty [n_windows, seqlen] tensor, got {tuple(windows.shape)}")
    if batch_size < 1:
        raise ZpruneUsageError(f"batch_size must be at least 1 (got {batch_size})")
    n_windows, seqlen = windows.shape
    if seqlen < 2:
        raise ZpruneUsageError(f"seqlen must be at least 2 (got {seqlen})")
    device = torch.device(device) if device is not None else model_device(model)

    start_time = time.perf_counter()
    window_sums: list[float] = []  # Python floats: fp64 accumulation over windows
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for first in range(0, n_windows, batch_size):
                batch = windows[first : first + batch_size].to(device)  # [b, seqlen]
                logits = model(input_ids=batch, use_cache=False).logits  # [b, seqlen, V]
                for row in range(batch.shape[0]):
                    window_sums.append(window_nll_sum(logits[row], batch[row]))
                del logits
                if progress is not None:
                    progress(min(first + batch_size, n_windows))
    finally:
        model.train(was_training)

    return result_of(window_sums, seqlen, time.perf_counter() - start_time)


def result_of(window_sums: list[float], seqlen: int, seconds: float) -> PerplexityResult:
    """The PerplexityResult of per-window NLL sums (each over seqlen - 1 predicted tokens)."""
    n_windows = len(window_sums)
    n_tokens = n_windows * (seqlen - 1)
    nll = sum(window_sums) / n_tokens
    ppl = math.exp(nll) if nll < 709.0 else math.inf  # a broken model must not raise OverflowError
    return PerplexityResult(ppl=ppl, nll=nll, n_windows=n_windows, n_tokens=n_tokens, seqlen=seqlen, seconds=seconds,
                            window_nlls=[total / (seqlen - 1) for total in window_sums])
