"""Modules that take a decoder block's place in the model's forward (models.runner, evaluation.blockwise), and
how a block's call is split into its hidden states and the rest.

Their own module because they subclass nn.Module, which needs torch when the class is defined: the modules
that the command line imports bind this one with `lazy` (base/lazy.py).
"""

from __future__ import annotations

import torch
from torch import nn


class StopAtBlock0(Exception):
    """Raised by our own hook only, to end a forward pass once block 0's input is captured."""


def split_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict]:
    kwargs = dict(kwargs)
    if args:
        hidden, rest = args[0], args[1:]
        if rest:  # positional extras (older families): keep them by position under a private key
            kwargs["__args__"] = rest
    else:
        hidden = kwargs.pop("hidden_states")
    return hidden, kwargs


class BlockStandIn(nn.Module):
    """Takes a decoder block's place in the model's forward without running it; every attribute it lacks is
    the real block's (some models read `decoder_layer.attention_type` to pick its mask)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.__dict__["block"] = block  # not a submodule: its parameters stay out of the model's

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["block"], name)


class RecordingStandIn(BlockStandIn):
    """Stands in for block `index` (>= 1) during the first window's forward: records the keyword arguments
    the model hands it and passes the hidden states on, in the container block 0 returned, without reading
    or running the real block."""

    def __init__(self, block: nn.Module, index: int, state: dict):
        super().__init__(block)
        self.index, self.state = index, state

    def forward(self, *args, **kwargs):
        hidden, kw = split_call(args, kwargs)
        self.state["kwargs"][self.index] = kw
        if self.index == len(self.state["kwargs"]) - 1:
            raise StopAtBlock0  # every block's arguments are known: no final norm, no LM head
        rest = self.state["rest"]
        return hidden if rest is None else (hidden, *rest)
