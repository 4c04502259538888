"""Calibration and evaluation windows, drawn exactly as the reference pruning code draws them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from zprune_cli.base.lazy import lazy
from zprune_cli.data.fit import HEAVY_REUSE, WindowFit, covered_tokens
from zprune_cli.data.sources import Text
from zprune_cli.base.errors import ZpruneUsageError

torch = lazy("torch")

MEASURE_DOCUMENTS = 10_000  # heavy overlap: tokenise up to this many more documents to name the sizes that fit


@dataclass
class Draw:
    windows: torch.Tensor  # LongTensor [nsamples, seqlen]
    fit: WindowFit  # how they overlap in the text


def _encode(tokenizer, text: str) -> torch.Tensor:
    # Plain tokenizer call, special tokens included, as the reference code does.
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def windows_bytes(nsamples: int, seqlen: int) -> int:
    """The token ids of the windows (int64), held in host memory while calibration runs."""
    return nsamples * seqlen * 8


def calibration_windows(text: Text, tokenizer, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """LongTensor [nsamples, seqlen] (see draw_windows)."""
    return draw_windows(text, tokenizer, nsamples, seqlen, seed).windows


def draw_windows(text: Text, tokenizer, nsamples: int, seqlen: int, seed: int) -> Draw:
    """The windows and how they overlap.

    Documents (c4, JSONL): random.seed(seed); per sample draw random.randint(0, n_docs - 1) until the
    document tokenises to more than seqlen tokens, then start = random.randint(0, n_tokens - seqlen - 1).
    One stream (wikitext2, .txt): tokenise once; per sample start = random.randint(0, n_tokens - seqlen - 1).
    A text that holds no window is refused (ZpruneUsageError), naming the sizes.
    """
    random.seed(seed)
    if text.documents is None:
        ids = _encode(tokenizer, text.stream)
        if ids.numel() <= seqlen:
            raise ZpruneUsageError(f"calibration text is too short: {ids.numel():,} tokens, and a window of --seqlen {seqlen} "
                                   f"needs more; lower --seqlen (below {ids.numel()}) or use longer text")
        windows = torch.empty((nsamples, seqlen), dtype=torch.long)
        starts = []
        for i in range(nsamples):
            start = random.randint(0, ids.numel() - seqlen - 1)
            windows[i] = ids[start : start + seqlen]
            starts.append((0, start))
        return Draw(windows, WindowFit(nsamples, seqlen, (ids.numel(),), covered_tokens(starts, seqlen)))
    return _draw_from_documents(text.documents, tokenizer, nsamples, seqlen)


def _draw_from_documents(docs: list[str], tokenizer, nsamples: int, seqlen: int) -> Draw:
    lengths: dict[int, torch.Tensor] = {}
    too_short = f"no document is longer than --seqlen {seqlen} tokens; lower --seqlen or use longer text"
    if not any(len(d) > seqlen for d in docs):  # a token is at least one character: nothing can fit
        raise ZpruneUsageError(too_short)
    windows = torch.empty((nsamples, seqlen), dtype=torch.long)
    spans = []
    for i in range(nsamples):
        for _attempt in range(100 * len(docs)):
            index = random.randint(0, len(docs) - 1)
            ids = lengths.get(index)
            if ids is None:
                ids = lengths[index] = _encode(tokenizer, docs[index])
            if ids.numel() > seqlen:
                break
        else:
            raise ZpruneUsageError(too_short)
        start = random.randint(0, ids.numel() - seqlen - 1)
        windows[i] = ids[start : start + seqlen]
        spans.append((index, start))
    counts = {index: ids.numel() for index, ids in lengths.items()}
    fit = WindowFit(nsamples, seqlen, tuple(counts.values()), covered_tokens(spans, seqlen), len(counts) == len(docs), True)
    if fit.reuse >= HEAVY_REUSE and not fit.complete and len(docs) - len(counts) <= MEASURE_DOCUMENTS:
        counts.update({i: _encode(tokenizer, d).numel() for i, d in enumerate(docs) if i not in counts})
        fit = WindowFit(nsamples, seqlen, tuple(counts.values()), fit.covered, True, True)
    return Draw(windows, fit)


def encode_stream(tokenizer, text: str) -> torch.Tensor:
    return _encode(tokenizer, text)
