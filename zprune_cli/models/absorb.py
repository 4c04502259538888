"""Carry a permutation of a layer's input channels into the layers that produce that input, so the block
computes the same function and the layer's stored weight is N:M as it stands (natively N:M).

A consumer C reads channel j of its input. When that channel is output row rows[j] of some producers passed
through per-channel operations only, permuting C's columns and those rows alike changes nothing:
- "channel": C's input is elementwise in the producers' rows: down_proj <- gate_proj and up_proj (a fused
  gate_up_proj in contiguous halves or interleaved; GPT-2's c_fc; each expert's own gate_up);
- "head": C's input is attention's output, whose channel (h, d) is channel d of the value head that query
  head h reads: o_proj <- v_proj (or the value rows of a fused qkv). Only permutations within a head, the
  same for the query heads that share a key-value head, carry over.
Which projections feed which, and how, is read from the block, never from names. The candidates are the
projections of the same block (of the same expert, for an expert's slice) whose output width is a multiple
of C's input width ("channel"), or of the key-value width ("head", with the head counts and size from the
model config; the key-value count tried as given, 1 and the head count), taken as contiguous or interleaved
slices. Each is probed by changing two of its rows: exactly the input channels of C the kind predicts must
change. Those that pass are verified together with a random permutation of that kind: C's input must come
out permuted, and the block's output unchanged. Layers that read the residual stream (q/k/v, gate/up) find
no producer and are not absorbed.

Blocks with the same projections (names, classes, shapes) share what was found; every block is verified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from zprune_cli.base.lazy import lazy
from zprune_cli.models import replay
from zprune_cli.models.blocks import bias_of, find_linears, weight_view
from zprune_cli.models.runner import run_block

torch = lazy("torch")
nn = lazy("torch.nn")
experts = lazy("zprune_cli.models.experts")

log = logging.getLogger("zprune")

PROBE_TOKENS = 16  # tokens of the random input a block is probed with


@dataclass(frozen=True)
class Feed:
    """Rows of one producer's [out, in] weight (and bias) feeding a consumer: row rows[j] is the consumer's
    input channel j ("channel"), or key-value channel j = (g, d) ("head")."""

    producer: str  # name within the block
    rows: torch.Tensor  # [width] int64


@dataclass(frozen=True)
class Absorption:
    """How a permutation of `consumer`'s input channels is carried to the rows of its producers."""

    consumer: str
    kind: str  # "channel" | "head"
    feeds: tuple[Feed, ...]
    head_dim: int = 0  # "head": channels per head
    group: int = 1  # "head": query heads per key-value head

    @property
    def unrestricted(self) -> bool:
        """Whether the producers absorb any permutation of the consumer's columns (no ties): "channel"."""
        return self.kind == "channel"

    def ties(self, width: int) -> list[torch.Tensor] | None:
        """The column ties a permutation must respect (methods.permutation): None (free) for "channel"; for
        "head", per key-value head the [group, head_dim] columns of its query heads."""
        if self.kind == "channel":
            return None
        d = torch.arange(self.head_dim)
        return [torch.stack([(g * self.group + r) * self.head_dim + d for r in range(self.group)])
                for g in range(width // (self.head_dim * self.group))]

    def feed_order(self, perm: torch.Tensor) -> torch.Tensor:
        """The consumer's permutation as an order of the feeding rows: rows[j] takes the old rows[order[j]]."""
        if self.kind == "channel":
            return perm
        hd, kv = self.head_dim, len(perm) // (self.head_dim * self.group)
        first = torch.arange(kv).repeat_interleave(hd) * self.group * hd + torch.arange(hd).repeat(kv)  # query head g*group
        return perm[first] - first + torch.arange(kv * hd)

    def describe(self) -> str:
        return f"{self.consumer} <- {', '.join(dict.fromkeys(f.producer for f in self.feeds))} ({self.kind})"


def permute_rows(module: nn.Module, rows: torch.Tensor, order: torch.Tensor) -> None:
    """Row rows[j] of the weight (and bias) takes the old row rows[order[j]], in place (the rows that move)."""
    weight = weight_view(module)
    moving = order != torch.arange(len(order), device=order.device)
    target, source = rows[moving].to(weight.device), rows[order[moving]].to(weight.device)
    weight[target] = weight[source]
    bias = bias_of(module)
    if bias is not None:
        bias[target] = bias[source]


def absorb(projections: dict[str, nn.Module], plan: Absorption, perm: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Permute the producers' rows for a consumer whose columns are (or are about to be) permuted by perm;
    returns each producer's (name, rows, order) as permute_rows applied them (what else is kept per row, such
    as quantization grids, follows the same move)."""
    order = plan.feed_order(perm)
    for feed in plan.feeds:
        permute_rows(projections[feed.producer], feed.rows, order)
    return [(feed.producer, feed.rows, order) for feed in plan.feeds]


def permute_columns(module: nn.Module, perm: torch.Tensor) -> None:
    """Column j of the weight takes the old column perm[j], in place (the columns that move)."""
    weight = weight_view(module)
    moving = (perm != torch.arange(len(perm), device=perm.device)).nonzero().squeeze(1)
    if 2 * len(moving) > len(perm):
        weight.copy_(weight.index_select(1, perm.to(weight.device)))
    else:
        weight[:, moving.to(weight.device)] = weight.index_select(1, perm[moving].to(weight.device))


def random_permutation(plan: Absorption, width: int, generator: torch.Generator, moves: int | None = None) -> torch.Tensor:
    """A random permutation of `width` channels that `plan` can carry (within heads, tied, for "head"): of
    all of them, or of about `moves` chosen at random (for "head", of the heads of enough key-value heads)."""
    perm = torch.arange(width)
    if plan.kind == "channel":
        chosen = torch.randperm(width, generator=generator)[: moves or width]
        perm[chosen] = chosen[torch.randperm(len(chosen), generator=generator)]
        return perm
    ties = plan.ties(width)
    if moves is not None:
        ties = [ties[int(i)] for i in torch.randperm(len(ties), generator=generator)[: max(1, moves // ties[0].numel())]]
    for index in ties:
        perm[index] = index[:, torch.randperm(index.shape[1], generator=generator)]
    return perm


class _Read(Exception):
    """Raised by BlockProbe.read's hook to stop the block once the consumer's input is seen."""


class BlockProbe:
    """One block, a short random input and what it computes: the ground truth every plan is checked on."""

    def __init__(self, block: nn.Module, kwargs: dict, hidden_size: int, geometry: tuple[int, int, int] | None):
        self.block, self.kwargs, self.geometry = block, kwargs, geometry
        self.projections = find_linears(block)
        parameter = next(block.parameters())
        generator = torch.Generator().manual_seed(0)
        self.hidden = torch.randn(1, PROBE_TOKENS, hidden_size, generator=generator).to(parameter.device, parameter.dtype)
        with replay.recording(self.projections) as self.calls:
            self.out, self.inputs = self.run(list(self.projections))
        self.whole_changes: dict[str, dict[str, torch.Tensor | None]] = {}  # models.producers._reaches, per producer

    def run(self, watch: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        """The block's output [1, T, hidden] and what each watched projection read (rows: every call's tokens)."""
        seen: dict[str, list[torch.Tensor]] = {name: [] for name in watch}

        def hook(name: str):
            def record(module, args):
                seen[name].append(args[0].detach().float().reshape(-1, args[0].shape[-1]).clone())
            return record

        handles = [self.projections[name].register_forward_pre_hook(hook(name)) for name in watch]
        try:
            out = run_block(self.block, self.hidden, self.kwargs).detach().float().clone()
        finally:
            for handle in handles:
                handle.remove()
        return out, {name: torch.cat(parts) if parts else None for name, parts in seen.items()}

    def read(self, name: str, changed: str, row: int | None = None) -> torch.Tensor | None:
        """What projection `name` reads (as run()'s inputs[name]) once the weight of projection `changed` (its
        row `row`, or all of it) was altered, the block stopped once `name` has been called: a candidate's
        row probe needs no more (not the MLP after o_proj, nor down_proj after gate/up). The projections the
        change does not reach replay their recorded outputs (models.replay). An expert's slice, which may be
        called more than once, runs the whole block. A plan is accepted only after verify() has run the whole
        block."""
        with replay.reusing(self.projections, self.calls, changed, row):
            return self._read(name)

    def read_all(self, changed: str) -> dict[str, torch.Tensor | None]:
        """What every projection reads once the whole weight of projection `changed` was altered (read())."""
        with replay.reusing(self.projections, self.calls, changed, None):
            return self.run(list(self.projections))[1]

    def _read(self, name: str) -> torch.Tensor | None:
        if isinstance(self.projections[name], experts.ExpertSlice):
            return self.run([name])[1][name]
        seen: list[torch.Tensor] = []

        def record(module, args):
            seen.append(args[0].detach().float().reshape(-1, args[0].shape[-1]).clone())
            raise _Read

        handle = self.projections[name].register_forward_pre_hook(record)
        try:
            run_block(self.block, self.hidden, self.kwargs)
        except _Read:
            pass
        finally:
            handle.remove()
        return seen[0] if seen else None

    def tolerance(self) -> float:
        """Relative error a pure reordering of sums may leave in the block's output (float32: 1e-4)."""
        return max(1e-4, 8 * torch.finfo(self.hidden.dtype).eps)


def attention_geometry(config) -> tuple[int, int, int] | None:
    """(query heads, key-value heads, head size) from a model config (its text config), or None."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    hidden = getattr(text, "hidden_size", None)
    if not isinstance(heads, int) or heads <= 0:
        return None
    kv_heads = getattr(text, "num_key_value_heads", None) or getattr(text, "num_kv_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if isinstance(hidden, int) else None)
    return (heads, int(kv_heads), int(head_dim)) if head_dim else None
