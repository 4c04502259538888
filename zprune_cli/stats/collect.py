"""Accumulate per-input statistics of a block's Linear layers with forward pre-hooks.

Linear layers that read the same input tensor (q/k/v; gate/up) form one input group and share
one statistic. Groups are found on the first call by tensor identity (held alive for that call,
so ids cannot be reused), never by layer names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from zprune_cli.base import distributed
from zprune_cli.base.lazy import lazy
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")
nn = lazy("torch.nn")


def sumsq_dtype() -> torch.dtype:
    return torch.float64  # exact sums over many tokens; a vector, so cheap (a function: no torch at import)


def gram_dtype() -> torch.dtype:
    return torch.float32  # [in, in] matmuls; fp64 would be slow on accelerators


@dataclass
class InputGroup:
    members: list[str]  # Linear names relative to the block, first one is the leader
    sumsq: torch.Tensor  # [in] float64
    gram: torch.Tensor | None  # [in, in] float32
    sum: torch.Tensor | None = None  # [in] float64, the first moment; zeros of sumsq's shape when not given
    n_tokens: int = 0
    n_sequences: int = 0

    def __post_init__(self) -> None:
        if self.sum is None:
            self.sum = torch.zeros_like(self.sumsq)

    @property
    def name(self) -> str:
        return self.members[0]

    def stats(self) -> LayerStats:
        return LayerStats(sumsq=self.sumsq, n_tokens=self.n_tokens, gram=self.gram, sum=self.sum)


@dataclass
class BlockStatsCollector:
    """Attach to one block, run windows through it, read `groups` (and `layer_stats()`)."""

    linears: dict[str, nn.Module]  # projections (nn.Linear, Conv1D) by name
    with_gram: bool = False
    width_of: Callable[[nn.Module], int] = lambda m: m.in_features  # input width, for a layer no token reaches
    groups: list[InputGroup] = field(default_factory=list)
    _leader_of: dict[str, InputGroup] = field(default_factory=dict)
    _seen: list[tuple[torch.Tensor, InputGroup]] = field(default_factory=list)
    _handles: list = field(default_factory=list)

    def __enter__(self) -> "BlockStatsCollector":
        for name, linear in self.linears.items():
            self._handles.append(linear.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._seen.clear()
        self._add_unreached()

    def _add_unreached(self) -> None:
        """A layer no token reached (an MoE expert never routed to) still gets its statistic: all
        zeros with n_tokens 0, so the store and the methods see every layer."""
        for name, module in self.linears.items():
            if name not in self._leader_of:
                width, device = self.width_of(module), module.weight.device
                gram = torch.zeros((width, width), dtype=gram_dtype(), device=device) if self.with_gram else None
                group = InputGroup(members=[name], sumsq=torch.zeros(width, dtype=sumsq_dtype(), device=device), gram=gram)
                self.groups.append(group)
                self._leader_of[name] = group

    def end_call(self) -> None:
        """Call after each window: group discovery ends with the first window."""
        self._seen.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, args):
            x = args[0]
            group = self._group_for(name, x, x.shape[-1])  # the input's width: Linear and Conv1D alike
            if group is None:  # a follower: its leader already counted this input
                return None
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)  # [tokens, in]
            group.sumsq += flat.square().sum(0).to(sumsq_dtype())
            group.sum += flat.sum(0).to(sumsq_dtype())
            if group.gram is not None:
                group.gram.addmm_(flat.T, flat)
            group.n_tokens += flat.shape[0]
            group.n_sequences += x.shape[0] if x.dim() > 2 else 1
            return None

        return hook

    def _group_for(self, name: str, x: torch.Tensor, width: int) -> InputGroup | None:
        known = self._leader_of.get(name)
        if known is not None:
            return known if known.name == name else None
        for seen, group in self._seen:  # first window: same tensor object as an earlier layer's?
            if seen is x:
                group.members.append(name)
                self._leader_of[name] = group
                return None
        gram = torch.zeros((width, width), dtype=gram_dtype(), device=x.device) if self.with_gram else None
        group = InputGroup(members=[name], sumsq=torch.zeros(width, dtype=sumsq_dtype(), device=x.device), gram=gram)
        self.groups.append(group)
        self._leader_of[name] = group
        self._seen.append((x, group))
        return group

    def layer_stats(self) -> dict[str, LayerStats]:
        """Statistics by Linear name (members of a group share the same object)."""
        return {member: group.stats() for group in self.groups for member in group.members}


def reduce_groups(groups: list[InputGroup]) -> list[InputGroup]:
    """Under torchrun: every rank's statistics of one block, summed, identical on every rank.

    Ranks may disagree on the groups: a layer no token of this rank's windows reached (an MoE expert)
    is a zero singleton here and part of a shared-input group on another rank. The groups are first
    laid out as one process over all windows would have found them (discovered in window order, then
    the layers reached by no window), then summed position by position."""
    if not distributed.active():
        return groups
    layout = _layout(distributed.all_gather_object([(g.members, g.n_sequences > 0) for g in groups]))
    mine = {g.name: g for g in groups}
    merged = [_as_group(mine[members[0]], members) for members in layout]
    for g in merged:
        counts = torch.tensor([g.n_tokens, g.n_sequences], dtype=torch.int64, device=g.sumsq.device)
        distributed.all_reduce_sum([g.sumsq, g.sum, counts, *([g.gram] if g.gram is not None else [])])
        g.n_tokens, g.n_sequences = int(counts[0]), int(counts[1])
    return merged


def _layout(per_rank: list[list[tuple[list[str], bool]]]) -> list[list[str]]:
    """The groups of all ranks in window order (ranks hold contiguous shards), each layer in one group."""
    layout, placed = [], set()
    for reached_only in (True, False):
        for groups in per_rank:
            for members, reached in groups:
                if reached >= reached_only and members[0] not in placed:
                    layout.append(members)
                    placed.update(members)
    return layout


def _as_group(local: InputGroup, members: list[str]) -> InputGroup:
    """This rank's share of a group (zeros when it reached none of its layers), under the common members."""
    return InputGroup(members=list(members), sumsq=local.sumsq, gram=local.gram, sum=local.sum,
                      n_tokens=local.n_tokens, n_sequences=local.n_sequences)
