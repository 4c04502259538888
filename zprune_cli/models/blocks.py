"""Find the decoder blocks of any Hugging Face causal LM and the Linear layers inside them.

Generic by structure, never by model name: the blocks are the largest nn.ModuleList whose
children all share one class, and the pruned layers are the nn.Linear modules inside a block.
"""

from __future__ import annotations

import re

from torch import nn

from zprune_cli.errors import ZpruneError


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (qualified name, ModuleList) of the repeated decoder blocks."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not any(isinstance(m, nn.Linear) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ZpruneError(f"found no decoder blocks (a ModuleList of Linear-holding blocks) in {type(model).__name__}")
    return best[1], best[2]


def find_linears(block: nn.Module, ignore: list[str] | None = None, prefix: str = "") -> dict[str, nn.Linear]:
    """The block's nn.Linear layers by name relative to the block, in module order.

    `ignore` holds regular expressions matched (re.search) against the full name `prefix + name`.
    """
    patterns = [re.compile(p) for p in ignore or []]
    found = {}
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear):
            full = f"{prefix}{name}"
            if not any(p.search(full) for p in patterns):
                found[name] = module
    return found


def block_prefix(blocks_name: str, index: int) -> str:
    """Qualified name prefix of block `index`, e.g. 'model.layers.3.'."""
    return f"{blocks_name}.{index}." if blocks_name else f"{index}."


# (block index, block prefix 'model.layers.3.', {name inside the block: Linear})
BlockLayers = list[tuple[int, str, dict[str, nn.Linear]]]


def pruned_layers(model: nn.Module, ignore: list[str] | tuple[str, ...] = ()) -> BlockLayers:
    """Every decoder block with its Linear layers, honouring the `ignore` regexes."""
    blocks_name, blocks = find_blocks(model)
    return [
        (i, block_prefix(blocks_name, i), find_linears(block, list(ignore), prefix=block_prefix(blocks_name, i)))
        for i, block in enumerate(blocks)
    ]


def layer_modules(layers: BlockLayers) -> dict[str, nn.Linear]:
    """{full name: Linear} of `pruned_layers` output, in model order."""
    return {prefix + name: linear for _, prefix, linears in layers for name, linear in linears.items()}


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside the decoder blocks, by qualified name within the model, in module order."""
    return layer_modules(pruned_layers(model))
