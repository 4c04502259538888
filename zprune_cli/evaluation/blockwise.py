"""Perplexity and sparsity of a model whose decoder blocks stay on disk (`--offload disk`).

A whole-model forward of an offloaded model reads every block from the checkpoint for every window.
Here each block is read once: every window goes through block 0, then every window through block 1,
and so on, keeping the hidden states of all windows ([n_windows, seqlen, hidden]). Then the model's own
forward runs once per window with its blocks swapped for a replay of those final hidden states, so the
embeddings, final norm, LM head and any logit softcapping are the model's own, whatever the family.
At one window per forward this is the whole-model computation, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from zprune_cli.base.errors import ZpruneError
from zprune_cli.evaluation.perplexity import PerplexityResult, result_of, window_nll_sum
from zprune_cli.models.blocks import counted_layers, find_blocks
from zprune_cli.models.runner import capture_block_inputs
from zprune_cli.models.stand_in import BlockStandIn, split_call
from zprune_cli.models.walk import run_windows, walk_blocks
from zprune_cli.base.sparsity import BlockwiseSparsity, SparsityCount


class _Replay(BlockStandIn):
    """Stands in for a decoder block: block 0's stand-in returns the current window's final hidden
    states, the others pass them on, each in the container type the real block returns."""

    def __init__(self, block: nn.Module, final: torch.Tensor | None, window: list[int], as_tuple: bool):
        super().__init__(block)
        self.final, self.window, self.as_tuple = final, window, as_tuple

    def forward(self, *args, **kwargs):
        hidden, _ = split_call(args, kwargs)
        out = hidden if self.final is None else self.final[self.window[0]].unsqueeze(0)
        return (out,) if self.as_tuple else out


class BlockwisePerplexity:
    """Perplexity of `windows` ([n_windows, seqlen]) built up block by block. Call it with every decoder
    block in order while the block is in memory (it is an `offload.on_done` listener, so a pruning run feeds
    it each block as it is finished), then take `result()`. `seconds` counts its own work only."""

    def __init__(self, model: nn.Module, windows: torch.Tensor):
        started = time.perf_counter()
        self.model, self.windows = model, windows
        self.inputs = capture_block_inputs(model, windows)  # the kwargs do not depend on the weights
        self.hidden, self.as_tuple, self.next = self.inputs.hidden, False, 0
        self.seconds = time.perf_counter() - started

    @torch.inference_mode()
    def __call__(self, index: int, prefix: str, block: nn.Module) -> None:
        if index != self.next:
            raise ZpruneError(f"block {index} was finished before block {self.next}: perplexity needs them in order")
        started = time.perf_counter()
        self.as_tuple = run_windows(block, self.hidden, self.inputs.block_kwargs[index], out=self.hidden)
        self.next += 1
        self.seconds += time.perf_counter() - started

    @torch.inference_mode()
    def result(self, progress: Callable[[int], None] | None = None) -> PerplexityResult:
        _, blocks = find_blocks(self.model)
        if self.next != len(blocks):
            raise ZpruneError(f"perplexity needs all {len(blocks)} blocks; {self.next} were run")
        started = time.perf_counter()
        seqlen = self.windows.shape[1]
        sums = _replay_heads(self.model, blocks, self.windows, self.hidden, self.as_tuple, progress)
        self.seconds += time.perf_counter() - started
        return result_of(sums, seqlen, self.seconds)


def blockwise_perplexity(model: nn.Module, windows: torch.Tensor, progress: Callable[[int], None] | None = None,
                         also: Sequence[Callable[[int, str, nn.Module], None]] = ()) -> PerplexityResult:
    """Perplexity of the model as it is, one decoder block in memory at a time; `also` are called with each
    block while it is read (a BlockwiseSparsity, so the blocks are not read again). `progress` is called
    with the number of steps done: one per block, then one per window."""
    _, blocks = find_blocks(model)
    measuring = BlockwisePerplexity(model, windows)
    done = [0]

    def visit(index: int, prefix: str, block: nn.Module, _) -> None:
        for listener in (measuring, *also):
            listener(index, prefix, block)
        done[0] = index + 1
        if progress is not None:
            progress(done[0])

    walk_blocks(model, visit)
    return measuring.result(lambda w: progress(len(blocks) + w) if progress is not None else None)


def _replay_heads(model: nn.Module, blocks: nn.ModuleList, windows: torch.Tensor, final: torch.Tensor,
                  as_tuple: bool, progress: Callable[[int], None] | None) -> list[float]:
    """Each window's sum of token NLLs, from the model's forward with its blocks replaying `final` (restored after)."""
    window = [0]
    originals = list(blocks)
    device = final.device
    try:
        for i in range(len(blocks)):
            blocks[i] = _Replay(originals[i], final if i == 0 else None, window, as_tuple)
        sums = []
        for w in range(windows.shape[0]):
            window[0] = w
            ids = windows[w : w + 1].to(device)
            logits = model(input_ids=ids, use_cache=False).logits
            sums.append(window_nll_sum(logits[0], ids[0]))
            if progress is not None:
                progress(w + 1)
        return sums
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


def blockwise_sparsity(model: nn.Module, layer_names: list[str] | None = None) -> SparsityCount:
    """sparsity.BlockwiseSparsity over the model as it is (default: every projection in the blocks), each block
    read while it is counted."""
    counting = BlockwiseSparsity(counted_layers(model, layer_names))
    walk_blocks(model, lambda index, prefix, block, _: counting(index, prefix, block))
    return counting.result()
