"""Calibration and evaluation windows, drawn exactly as the reference pruning code draws them."""

from __future__ import annotations

import random

import torch

from zprune_cli.data.sources import Text
from zprune_cli.errors import ZpruneError


def _encode(tokenizer, text: str) -> torch.Tensor:
    # Plain tokenizer call, special tokens included, as the reference code does.
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def calibration_windows(text: Text, tokenizer, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """LongTensor [nsamples, seqlen].

    Documents (c4, JSONL): random.seed(seed); per sample draw random.randint(0, n_docs - 1) until the
    document tokenises to more than seqlen tokens, then start = random.randint(0, n_tokens - seqlen - 1).
    One stream (wikitext2, .txt): tokenise once; per sample start = random.randint(0, n_tokens - seqlen - 1).
    """
    random.seed(seed)
    windows = torch.empty((nsamples, seqlen), dtype=torch.long)
    if text.documents is None:
        ids = _encode(tokenizer, text.stream)
        if ids.numel() <= seqlen:
            raise ZpruneError(f"calibration text is too short: {ids.numel()} tokens, need more than seqlen={seqlen}")
        for i in range(nsamples):
            start = random.randint(0, ids.numel() - seqlen - 1)
            windows[i] = ids[start : start + seqlen]
        return windows
    docs = text.documents
    lengths: dict[int, torch.Tensor] = {}
    if not any(len(d) > seqlen for d in docs):  # a token is at least one character: nothing can fit
        raise ZpruneError(f"no document is longer than seqlen={seqlen} tokens; lower --seqlen or use longer text")
    for i in range(nsamples):
        for _attempt in range(100 * len(docs)):
            index = random.randint(0, len(docs) - 1)
            ids = lengths.get(index)
            if ids is None:
                ids = lengths[index] = _encode(tokenizer, docs[index])
            if ids.numel() > seqlen:
                break
        else:
            raise ZpruneError(f"no document is longer than seqlen={seqlen} tokens; lower --seqlen or use longer text")
        start = random.randint(0, ids.numel() - seqlen - 1)
        windows[i] = ids[start : start + seqlen]
    return windows


def encode_stream(tokenizer, text: str) -> torch.Tensor:
    return _encode(tokenizer, text)
