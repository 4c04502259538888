"""Find the decoder blocks of any Hugging Face causal LM and the projection layers inside them.

Generic by structure, never by model name. The blocks are the largest nn.ModuleList whose children
all share one class and hold a projection, searched first inside the model's language decoder
(`get_decoder()`, so a multimodal model's text tower wins over a bigger vision tower). The pruned
layers are the 2-D projections inside a block: nn.Linear, transformers' Conv1D (GPT-2), whose
weight is stored transposed, and each expert of an MoE module that fuses its experts into one tensor
(`models.experts.ExpertSlice`). Every engine read or write of a pruned weight goes through
`weight_view`, which always shows it as [out, in].
"""

from __future__ import annotations

import re
from typing import TypeAlias

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")
experts = lazy("zprune_cli.models.experts")  # defines nn.Module subclasses: imports torch


def _conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for this module's tensor helpers
        return None
    return Conv1D


def is_transposed(module: nn.Module) -> bool:
    """True for a projection whose stored weight is [in, out] (transformers' Conv1D, transposed experts)."""
    if isinstance(module, experts.ExpertSlice):
        return module.transposed
    conv1d = _conv1d_class()
    return conv1d is not None and isinstance(module, conv1d)


def is_projection(module: nn.Module) -> bool:
    """A layer zprune prunes: y = x W^T (+ b) with a 2-D weight."""
    return isinstance(module, nn.Linear) or is_transposed(module)


def weight_view(module: nn.Module) -> torch.Tensor:
    """The projection's weight as [out, in]: the tensor itself, or a transposed view for Conv1D, so
    `weight_view(m).copy_(new)` writes through to the stored parameter."""
    weight = module.weight.data
    return weight.t() if is_transposed(module) else weight


def bias_of(module: nn.Module) -> torch.Tensor | None:
    """A projection's bias [out] (an expert's row of its module's '<param>_bias'), or None."""
    if isinstance(module, experts.ExpertSlice):
        bias = getattr(module.owner, f"{module.param}_bias", None)
        return bias.data[module.index] if isinstance(bias, torch.Tensor) and bias.dim() == 2 else None
    bias = getattr(module, "bias", None)
    return bias.data if isinstance(bias, torch.Tensor) else None


def in_features(module: nn.Module) -> int:
    """Input width of a projection (the `in` of [out, in])."""
    return weight_view(module).shape[1]


def _holds_projection(module: nn.Module) -> bool:
    return any(is_projection(m) for m in module.modules())


def _largest_block_list(root: nn.Module) -> tuple[str, nn.ModuleList] | None:
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in root.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1 or not _holds_projection(module[0]):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    return None if best is None else (best[1], best[2])


def _language_decoder(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(qualified name, module) of the model's text decoder as transformers names it, if it has one."""
    get_decoder = getattr(model, "get_decoder", None)
    if not callable(get_decoder):
        return None
    try:
        decoder = get_decoder()
    except Exception:  # some wrappers raise instead of returning None; then search the whole model
        return None
    if not isinstance(decoder, nn.Module) or decoder is model:
        return None
    return next(((name, m) for name, m in model.named_modules() if m is decoder), None)


def _what_was_found(model: nn.Module) -> str:
    tops = ", ".join(f"{n} ({type(m).__name__})" for n, m in model.named_children()) or "none"
    lists = [f"{n} ({len(m)} x {'/'.join(sorted({type(c).__name__ for c in m}))})"
             for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    return f"top-level modules: {tops}; ModuleLists: {', '.join(lists[:6]) or 'none'}"


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (qualified name, ModuleList) of the repeated decoder blocks."""
    decoder = _language_decoder(model)
    if decoder is not None:
        found = _largest_block_list(decoder[1])
        if found is not None:
            return ".".join(part for part in (decoder[0], found[0]) if part), found[1]
    found = _largest_block_list(model)
    if found is None:
        raise ZpruneError(
            f"found no decoder blocks in {type(model).__name__} (looked for a ModuleList of same-class blocks "
            f"holding Linear or Conv1D layers); {_what_was_found(model)}"
        )
    return found


def find_linears(block: nn.Module, ignore: list[str] | None = None, prefix: str = "") -> dict[str, nn.Module]:
    """The block's projections (nn.Linear, Conv1D, fused experts' slices '<module>.<param>.<expert>') by name
    relative to the block, in module order.

    `ignore` holds regular expressions matched (re.search) against the full name `prefix + name`.
    """
    patterns = [re.compile(p) for p in ignore or []]
    found = {}
    for name, module in block.named_modules():
        for inner, piece in experts.expert_slices(module).items():
            full = f"{prefix}{name}.{inner}" if name else f"{prefix}{inner}"
            if not any(p.search(full) for p in patterns):
                found[full[len(prefix):]] = piece
        if is_projection(module):
            full = f"{prefix}{name}"
            if module.weight.dim() != 2:
                raise ZpruneError(f"layer {full}: {type(module).__name__} has a weight of shape "
                                  f"{list(module.weight.shape)}; zprune prunes 2-D [out, in] projections only")
            if not any(p.search(full) for p in patterns):
                found[name] = module
    return found


def fused_weights(block: nn.Module, prefix: str = "") -> dict[str, list[int]]:
    """{full name: shape} of the block's parameters with 3 or more dimensions that no projection or expert
    slice covers (fused experts of a module without transformers' layout flag): zprune leaves them dense."""
    covered = {id(p) for m in block.modules() if experts.is_fused_experts(m) for p in m.parameters(recurse=False)}
    return {f"{prefix}{name}": list(p.shape) for name, p in block.named_parameters()
            if p.dim() >= 3 and id(p) not in covered}


def block_prefix(blocks_name: str, index: int) -> str:
    """Qualified name prefix of block `index`, e.g. 'model.layers.3.'."""
    return f"{blocks_name}.{index}." if blocks_name else f"{index}."


# (block index, block prefix 'model.layers.3.', {name inside the block: projection})
BlockLayers: TypeAlias = "list[tuple[int, str, dict[str, nn.Module]]]"


def pruned_layers(model: nn.Module, ignore: list[str] | tuple[str, ...] = ()) -> BlockLayers:
    """Every decoder block with its projection layers, honouring the `ignore` regexes."""
    blocks_name, blocks = find_blocks(model)
    return [
        (i, block_prefix(blocks_name, i), find_linears(block, list(ignore), prefix=block_prefix(blocks_name, i)))
        for i, block in enumerate(blocks)
    ]


def dense_fused_weights(model: nn.Module) -> dict[str, list[int]]:
    """fused_weights of every decoder block, by qualified parameter name."""
    blocks_name, blocks = find_blocks(model)
    return {k: v for i, block in enumerate(blocks) for k, v in fused_weights(block, block_prefix(blocks_name, i)).items()}


def layer_modules(layers: BlockLayers) -> dict[str, nn.Module]:
    """{full name: projection} of `pruned_layers` output, in model order."""
    return {prefix + name: linear for _, prefix, linears in layers for name, linear in linears.items()}


def block_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every projection inside the decoder blocks, by qualified name within the model, in module order."""
    return layer_modules(pruned_layers(model))


def counted_layers(model: nn.Module, layer_names: list[str] | None = None) -> dict[str, nn.Module]:
    """Sparsity's denominator: the named layers (the pruned ones), default every projection in the blocks."""
    return block_linears(model) if layer_names is None else named_layers(model, layer_names)


def named_layers(model: nn.Module, layer_names: list[str]) -> dict[str, nn.Module]:
    """{name: projection} for names of pruned layers (as a zprune.json lists them); unknown names are refused."""
    everything = block_linears(model)
    unknown = [n for n in layer_names if n not in everything]
    if unknown:
        raise ZpruneUsageError(f"no such layer(s) in the model: {', '.join(unknown[:5])}")
    return {n: everything[n] for n in layer_names}


def stored_tensor_name(name: str, layer: nn.Module) -> str:
    """The state-dict name of the tensor a pruned layer's weight lives in: '<name>.weight', or for an expert
    slice the fused tensor ('...experts.gate_up_proj' for '...experts.gate_up_proj.3')."""
    return name.rpartition(".")[0] if isinstance(layer, experts.ExpertSlice) else f"{name}.weight"
