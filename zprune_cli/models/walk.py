"""The one block walk: calibration, pruned propagation and block-wise evaluation all go through it.

For each decoder block in order: hold it (`--offload disk`: this block alone is read), run every window
through it with a collector attached, call the caller's hook, and hand the outputs to the next block.
Windows run one at a time (bounded memory); a window's output depends on that window only.
A collector is anything entered around the windows with an `end_call()` after each one
(`stats.collect.BlockStatsCollector`); this module does not know what it gathers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

from zprune_cli.base.lazy import inference_mode, lazy
from zprune_cli.models.blocks import block_prefix, find_blocks
from zprune_cli.models.offload import held
from zprune_cli.models.runner import call_block

torch = lazy("torch")
nn = lazy("torch.nn")


class Collector(Protocol):
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc) -> Any: ...
    def end_call(self) -> None: ...


# visit(index, prefix, block, collector): after the windows ran through the block (the collector closed)
Visit: TypeAlias = "Callable[[int, str, nn.Module, Any], None]"


@inference_mode
def run_windows(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any], out: torch.Tensor | None = None,
                collector: Collector | None = None, advance: Callable[[int], Any] | None = None) -> bool:
    """Every window of `hidden` [n, seqlen, hidden] through `block`, its output written to `out` (None: not kept;
    `hidden` itself: in place). `collector.end_call()` after each window. Returns whether the block returns a
    tuple (a stand-in replaying its outputs must return the same container)."""
    as_tuple = False
    for i in range(hidden.shape[0]):
        output = call_block(block, hidden[i : i + 1], kwargs)
        as_tuple = isinstance(output, (tuple, list))
        if out is not None:
            out[i] = (output[0] if as_tuple else output)[0]
        if collector is not None:
            collector.end_call()
        if advance is not None:
            advance(1)
    return as_tuple


def walk_blocks(model: nn.Module, visit: Visit, hidden: torch.Tensor | None = None,
                block_kwargs: list[dict[str, Any]] | None = None, *,
                collector: Callable[[int, nn.Module], Collector] | None = None, changes: bool = False,
                done: bool = False, per_window: Callable[[int], Any] | None = None,
                per_block: Callable[[int], Any] | None = None, start: int = 0,
                after_block: Callable[[int, torch.Tensor | None], Any] | None = None) -> torch.Tensor | None:
    """Walk the decoder blocks; returns the last block's outputs (None without windows).

    hidden: block 0's inputs [n, seqlen, hidden] (None: hold each block and visit it, no forward pass);
    collector(index, block): attached while the windows run through the block as it is;
    changes: `visit` changes the block (prunes it), so the next block's inputs are its outputs after the
    visit (a second pass); otherwise the collecting pass gives them. done: the block is finished when
    released (`offload.on_done` listeners, the streaming save). per_window / per_block: progress steps.
    start: the first block walked (a resumed prune: `hidden` holds that block's inputs); after_block(index,
    hidden): once block `index` is finished and released, with the next block's inputs.
    The callers run it under torch.inference_mode (calibration, pruning, evaluation)."""
    blocks_name, blocks = find_blocks(model)
    # outputs go to a second tensor, then the two swap: from block 1 on `hidden` itself is overwritten (callers
    # pass inputs they own: read from the store, or captured for this run)
    buffer = None if hidden is None else torch.empty_like(hidden)
    for index, block in enumerate(blocks):
        if index < start:
            continue
        with held(model, index, done=done):
            attached = collector(index, block) if collector is not None and hidden is not None else None
            if hidden is not None:
                with attached if attached is not None else contextlib.nullcontext():
                    run_windows(block, hidden, block_kwargs[index], None if changes else buffer, attached, per_window)
            visit(index, block_prefix(blocks_name, index), block, attached)
            if hidden is not None and changes:
                run_windows(block, hidden, block_kwargs[index], buffer)
        if hidden is not None:
            hidden, buffer = buffer, hidden
        if per_block is not None:
            per_block(1)
        if after_block is not None:
            after_block(index, hidden)
    return hidden
