"""Run a causal LM one decoder block at a time.

`capture_block_inputs` records what the model hands to every block (attention masks, position
ids, rotary embeddings, cache position: whatever this transformers version and family pass),
plus block 0's hidden states for every window. For unpadded windows of one length those keyword
arguments do not depend on the tokens, so one forward of the first window gives them for all
windows; the other windows stop at block 0. Blocks of one model may get different keyword
arguments (Gemma 3's sliding and global attention layers), so each block keeps its own.

In that first forward only block 0 runs: the others are replaced by stand-ins that record their
arguments and pass the hidden states on. Nor do they depend on the hidden states' values, and
running the real blocks read every block of an offloaded model from disk (at Llama-2-7B's shape,
113 s of a 16-minute prune) only to learn its arguments.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from zprune_cli.base.lazy import inference_mode, lazy
from zprune_cli.models.blocks import find_blocks

torch = lazy("torch")
nn = lazy("torch.nn")
stand_in = lazy("zprune_cli.models.stand_in")  # nn.Module subclasses: imports torch


@dataclass
class BlockInputs:
    hidden: torch.Tensor  # [n_windows, seqlen, hidden_size], the input of the current block
    block_kwargs: list[dict[str, Any]]  # per block: keyword arguments the model passes to it


def block_inputs_bytes(nsamples: int, seqlen: int, hidden: int, dtype: torch.dtype) -> int:
    """Block 0's inputs of every window, [nsamples, seqlen, hidden] in `dtype`: what capture_block_inputs holds."""
    return nsamples * seqlen * hidden * dtype.itemsize


@inference_mode
def capture_block_inputs(model: nn.Module, windows: torch.Tensor, progress_task=None) -> BlockInputs:
    """windows: LongTensor [n_windows, seqlen] of token ids. Returns block 0's inputs for all windows."""
    _, blocks = find_blocks(model)
    device = next(model.parameters()).device
    n, seqlen = windows.shape
    state: dict[str, Any] = {"kwargs": [None] * len(blocks), "rest": None, "window": 0}
    hidden: torch.Tensor | None = None

    def block0_inputs(module, args, kwargs):
        h, kw = stand_in.split_call(args, kwargs)
        nonlocal hidden
        if hidden is None:
            hidden = torch.empty((n, seqlen, h.shape[-1]), dtype=h.dtype, device=h.device)
            state["kwargs"][0] = kw
        hidden[state["window"]] = h[0]
        if state["window"] > 0:
            raise stand_in.StopAtBlock0
        return None

    def block0_output(module, args, output):
        if isinstance(output, (tuple, list)):  # what the stand-ins return: the same container
            state["rest"] = tuple(output[1:])
        return None

    handles = [blocks[0].register_forward_pre_hook(block0_inputs, with_kwargs=True),
               blocks[0].register_forward_hook(block0_output)]
    try:
        for i in range(n):
            state["window"] = i
            with _stand_ins(blocks, state) if i == 0 else contextlib.nullcontext():
                try:
                    model(windows[i : i + 1].to(device), use_cache=False)
                except stand_in.StopAtBlock0:
                    pass
            if progress_task is not None:
                progress_task.advance(1)
    finally:
        for handle in handles:
            handle.remove()
    assert hidden is not None
    return BlockInputs(hidden=hidden, block_kwargs=state["kwargs"])


@contextlib.contextmanager
def _stand_ins(blocks: nn.ModuleList, state: dict):
    """Blocks 1.. replaced by stand-ins in the model's ModuleList for the body, then put back."""
    originals = list(blocks)
    try:
        for i in range(1, len(blocks)):
            blocks[i] = stand_in.RecordingStandIn(originals[i], i, state)
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


def call_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    """One window through one block, as the block returns it (a tensor, or a tuple led by one)."""
    kwargs = dict(kwargs)
    extra = kwargs.pop("__args__", ())
    return block(hidden, *extra, **kwargs)


def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """One window through one block. hidden: [1, seqlen, hidden_size] -> same shape."""
    out = call_block(block, hidden, kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out
