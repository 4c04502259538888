"""A module bound now and imported on its first use.

`import torch` costs 1.5 s of CPU on these machines, more than a whole cached `compare` re-run, a `--help`
or a shell completion needs. The modules the command line and the method registry import therefore bind
torch with `torch = lazy("torch")`: the name reads like the module, and the real import happens at the first
attribute read (`torch.zeros`), which only the code that touches tensors performs.

Rules for a module that does this (tests/test_cached_rerun.py checks that `zprune --help`, `compare --show` and
a fully cached `compare` import no torch): no torch attribute read at import time (no
`@torch.inference_mode()` on a function: `@inference_mode` below; no `torch.float32` constant; no `nn.Module`
base class: such a module is itself bound with `lazy`); annotations stay strings (`from __future__ import
annotations`).
"""

from __future__ import annotations

import functools
import importlib
import sys
import types


class LazyModule(types.ModuleType):
    """Stands for the module `name` in the namespace that bound it. The first read imports the module and
    rebinds that namespace's name(s) to it, so later reads are plain global lookups (no proxy in a hot loop)
    and a value patched on the module (a test's monkeypatch of `safetensors.torch.save_file`) is the one read."""

    def __init__(self, name: str, namespace: dict):
        super().__init__(name)
        self.__dict__["_namespace"] = namespace

    def _load(self) -> types.ModuleType:
        real = importlib.import_module(self.__name__)
        namespace = self.__dict__["_namespace"]
        for key, value in list(namespace.items()):
            if value is self:
                namespace[key] = real
        return real

    def __getattr__(self, attribute: str):
        return getattr(self._load(), attribute)

    def __setattr__(self, attribute: str, value) -> None:
        # a patch here would live on the stand-in (and pytest's undo would delete the module's own value)
        raise TypeError(f"set {attribute!r} on the module {self.__name__!r} itself, not on its lazy stand-in")

    def __repr__(self) -> str:
        return f"<lazy module {self.__name__!r}>"


def lazy(name: str) -> types.ModuleType:
    """The module `name`, imported when first used: `torch = lazy("torch")`, `F = lazy("torch.nn.functional")`,
    at the top of a module (the name bound there becomes the module itself at the first read)."""
    return LazyModule(name, sys._getframe(1).f_globals)


def inference_mode(function):
    """`@torch.inference_mode()` that reads torch when the function is called, not when it is defined."""

    @functools.wraps(function)
    def without_autograd(*args, **kwargs):
        with importlib.import_module("torch").inference_mode():
            return function(*args, **kwargs)

    return without_autograd
