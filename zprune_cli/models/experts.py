"""MoE experts fused into one tensor per projection, seen as one projection per expert.

transformers 5 stores the experts of Mixtral, Qwen2/3-MoE, OLMoE, GPT-OSS and most other MoE families as
[experts, out, in] parameters of one module (`@use_experts_implementation`, which marks it with
`is_transposed`: [experts, in, out] when True). Each expert's slice becomes an `ExpertSlice`: a module
outside the model's tree whose `weight` is a view of the fused tensor, so `weight_view(...).copy_()`
prunes in place, like any Linear.

Statistics come from the tokens routed to each expert. While any forward pre-hook is registered on a
slice, its experts module runs its eager forward (the reference loop over the experts hit, whatever
`experts_implementation` the model was loaded with) inside a TorchFunctionMode that routes every
`F.linear(x, fused[e])` or `x @ fused[e]` through slice e, so its pre-hooks see exactly that expert's
inputs. An expert no token reaches gets no call, like an unrouted per-expert Linear.
"""

from __future__ import annotations

import types
import weakref
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from zprune_cli.base.errors import ZpruneError

# How the eager expert loops multiply a token batch by one expert's slice.
_PRODUCTS = {nn.functional.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}


def is_fused_experts(module: nn.Module) -> bool:
    """A transformers experts module: 3-D expert tensors and the layout flag its decorator sets."""
    return isinstance(getattr(module, "is_transposed", None), bool) and any(
        p.dim() == 3 for p in module.parameters(recurse=False))


class ExpertSlice(nn.Module):
    """Expert `index` of the fused parameter `param` of `owner`, as a projection with an [out, in] view."""

    def __init__(self, owner: nn.Module, param: str, index: int):
        super().__init__()
        object.__setattr__(self, "owner", owner)  # not a submodule: the slice lives outside the model's tree
        self.param, self.index, self.transposed = param, index, bool(owner.is_transposed)

    @property
    def weight(self) -> torch.Tensor:
        """The stored slice ([out, in], or [in, out] when transposed): a view of the fused tensor, read
        from the owner at each access (an offloaded block swaps its parameters in and out)."""
        return getattr(self.owner, self.param).data[self.index]

    @property
    def in_features(self) -> int:
        return self.weight.shape[0 if self.transposed else 1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[1 if self.transposed else 0]

    def forward(self, x: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return compute()  # the experts module's own product, unchanged; calling the slice fires its hooks

    def register_forward_pre_hook(self, hook, **kwargs):
        handle = super().register_forward_pre_hook(hook, **kwargs)
        router = _router_of(self.owner)
        router.watch(self)
        return _Handle(handle, lambda: router.unwatch(self))

    def extra_repr(self) -> str:
        return f"{self.param}[{self.index}], in_features={self.in_features}, out_features={self.out_features}"


def expert_slices(module: nn.Module) -> dict[str, ExpertSlice]:
    """{'<param>.<expert>': slice} of a fused experts module (empty for any other module)."""
    if not is_fused_experts(module):
        return {}
    return {f"{name}.{e}": ExpertSlice(module, name, e)
            for name, p in module.named_parameters(recurse=False) if p.dim() == 3 for e in range(p.shape[0])}


def fused_tensor_name(layer: str) -> str:
    """The state-dict name of the fused tensor an expert slice's layer name points into."""
    return layer.rpartition(".")[0]


class _Handle:
    def __init__(self, handle, release: Callable[[], None]):
        self._handle, self._release = handle, release

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._release()
            self._handle = None


class _Router:
    """Per experts module: while slices are watched, its eager forward runs with calls routed to them."""

    def __init__(self, owner: nn.Module):
        self.owner = owner
        self.watched: dict[tuple[str, int], list[ExpertSlice]] = {}
        self.handles: list = []
        self.mode: _RouteCalls | None = None

    def watch(self, piece: ExpertSlice) -> None:
        if not self.watched:
            self._attach()
        self.watched.setdefault((piece.param, piece.index), []).append(piece)

    def unwatch(self, piece: ExpertSlice) -> None:
        pieces = self.watched.get((piece.param, piece.index), [])
        if piece in pieces:
            pieces.remove(piece)
        if not pieces:
            self.watched.pop((piece.param, piece.index), None)
        if not self.watched:
            self._detach()

    def _attach(self) -> None:
        eager = getattr(type(self.owner).forward, "__wrapped__", None)  # under transformers' dispatch decorator
        if eager is not None:
            self.owner.forward = types.MethodType(eager, self.owner)
        self.handles = [self.owner.register_forward_pre_hook(self._enter),
                        self.owner.register_forward_hook(self._exit, always_call=True)]

    def _detach(self) -> None:
        self.owner.__dict__.pop("forward", None)
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _enter(self, module, args) -> None:
        fused = {name: p for name, p in self.owner.named_parameters(recurse=False) if p.dim() == 3 and not p.is_meta}
        self.mode = _RouteCalls(fused, self.watched)
        self.mode.__enter__()

    def _exit(self, module, args, output) -> None:
        mode, self.mode = self.mode, None
        if mode is None:
            return
        mode.__exit__(None, None, None)
        tokens = args[0].numel() if args and isinstance(args[0], torch.Tensor) else 0
        if mode.fused and tokens and mode.routed == 0:
            raise ZpruneError(
                f"{type(self.owner).__name__} ran on {tokens // max(1, args[0].shape[-1])} token(s) but never "
                "multiplied them by one expert's slice (F.linear or @), so zprune cannot tell which tokens reached "
                "which expert; leave its experts dense with --ignore")


class _RouteCalls(TorchFunctionMode):
    def __init__(self, fused: dict[str, torch.Tensor], watched: dict[tuple[str, int], list[ExpertSlice]]):
        super().__init__()
        self.fused, self.watched, self.routed = fused, watched, 0

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PRODUCTS and len(args) >= 2 and isinstance(args[1], torch.Tensor):
            key = self._slice_of(args[1])
            if key is not None:
                self.routed += 1
                compute = lambda: func(*args, **kwargs)  # noqa: E731
                for piece in self.watched.get(key, []):
                    out = piece(args[0], compute)
                    compute = lambda out=out: out  # noqa: E731  every watcher sees the input, the product runs once
                return compute()
        return func(*args, **kwargs)

    def _slice_of(self, weight: torch.Tensor) -> tuple[str, int] | None:
        """(parameter, expert) when `weight` is one expert's slice of a fused tensor of this module."""
        if weight.is_meta:
            return None
        for name, fused in self.fused.items():
            if (weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
                    and tuple(weight.shape) == tuple(fused.shape[1:]) and weight.stride() == fused.stride()[1:]):
                return name, (weight.storage_offset() - fused.storage_offset()) // fused.stride(0)
        return None


_ROUTERS: "weakref.WeakKeyDictionary[nn.Module, _Router]" = weakref.WeakKeyDictionary()


def _router_of(owner: nn.Module) -> _Router:
    router = _ROUTERS.get(owner)
    if router is None:
        router = _ROUTERS[owner] = _Router(owner)
    return router
