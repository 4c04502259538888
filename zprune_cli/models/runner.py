"""Run a causal LM one decoder block at a time.

`capture_block_inputs` records what the model hands to every block (attention masks, position
ids, rotary embeddings, cache position: whatever this transformers version and family pass),
plus block 0's hidden states for every window. For unpadded windows of one length those keyword
arguments do not depend on the tokens, so one full forward of the first window gives them for
all windows; the other windows stop at block 0. Blocks of one model may get different keyword
arguments (Gemma 3's sliding and global attention layers), so each block keeps its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zprune_cli.models.blocks import find_blocks


class _StopAtBlock0(Exception):
    """Raised by our own hook only, to end a forward pass once block 0's input is captured."""


@dataclass
class BlockInputs:
    hidden: torch.Tensor  # [n_windows, seqlen, hidden_size], the input of the current block
    block_kwargs: list[dict[str, Any]]  # per block: keyword arguments the model passes to it


def block_inputs_bytes(nsamples: int, seqlen: int, hidden: int, dtype: torch.dtype) -> int:
    """Block 0's inputs of every window, [nsamples, seqlen, hidden] in `dtype`: what capture_block_inputs holds."""
    return nsamples * seqlen * hidden * dtype.itemsize


def split_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict]:
    kwargs = dict(kwargs)
    if args:
        hidden, rest = args[0], args[1:]
        if rest:  # positional extras (older families): keep them by position under a private key
            kwargs["__args__"] = rest
    else:
        hidden = kwargs.pop("hidden_states")
    return hidden, kwargs


@torch.inference_mode()
def capture_block_inputs(model: nn.Module, windows: torch.Tensor, progress_task=None) -> BlockInputs:
    """windows: LongTensor [n_windows, seqlen] of token ids. Returns block 0's inputs for all windows."""
    _, blocks = find_blocks(model)
    device = next(model.parameters()).device
    n, seqlen = windows.shape
    block_kwargs: list[dict[str, Any] | None] = [None] * len(blocks)
    hidden: torch.Tensor | None = None
    state = {"window": 0}

    def make_hook(index: int):
        def hook(module, args, kwargs):
            h, kw = split_call(args, kwargs)
            if state["window"] == 0:
                block_kwargs[index] = kw
            if index == 0:
                nonlocal hidden
                if hidden is None:
                    hidden = torch.empty((n, seqlen, h.shape[-1]), dtype=h.dtype, device=h.device)
                hidden[state["window"]] = h[0]
                if state["window"] > 0:
                    raise _StopAtBlock0
            return None

        return hook

    handles = [block.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        for i in range(n):
            state["window"] = i
            try:
                model(windows[i : i + 1].to(device), use_cache=False)
            except _StopAtBlock0:
                pass
            if progress_task is not None:
                progress_task.advance(1)
    finally:
        for handle in handles:
            handle.remove()
    assert hidden is not None
    return BlockInputs(hidden=hidden, block_kwargs=block_kwargs)  # type: ignore[arg-type]


def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """One window through one block. hidden: [1, seqlen, hidden_size] -> same shape."""
    kwargs = dict(kwargs)
    extra = kwargs.pop("__args__", ())
    out = block(hidden, *extra, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.inference_mode()
def run_block_all(block: nn.Module, inputs: torch.Tensor, kwargs: dict[str, Any], out: torch.Tensor | None = None):
    """All windows through one block, one window at a time (bounded memory). Returns [n, seqlen, hidden]."""
    out = torch.empty_like(inputs) if out is None else out
    for i in range(inputs.shape[0]):
        out[i] = run_block(block, inputs[i : i + 1], kwargs)[0]
    return out
