"""base/lazy.py: a module bound at import and imported at its first read; and what a handle knows without torch."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from zprune_cli.base.lazy import LazyModule, inference_mode, lazy
from zprune_cli.models import runtime


def test_the_first_read_imports_the_module_and_rebinds_the_name(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    namespace = {}
    exec("from zprune_cli.base.lazy import lazy\ncolorsys = lazy('colorsys')\nalias = colorsys", namespace)
    stand_in = namespace["colorsys"]
    assert isinstance(stand_in, LazyModule) and "colorsys" not in sys.modules  # bound, not imported
    assert namespace["colorsys"].rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert namespace["colorsys"] is sys.modules["colorsys"] and namespace["alias"] is sys.modules["colorsys"]
    assert not isinstance(namespace["colorsys"], LazyModule)  # later reads are plain global lookups


def test_a_patch_on_the_real_module_is_what_a_lazy_binding_reads(monkeypatch):
    import safetensors.torch

    from zprune_cli.stats import store  # binds safetensors.torch lazily

    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: "patched")
    assert store.safetensors_torch.save_file({}, "unused") == "patched"


def test_a_lazy_stand_in_refuses_assignment():
    stand_in = lazy("json")
    with pytest.raises(TypeError, match="on the module 'json' itself"):
        stand_in.dumps = None
    assert stand_in.dumps({"a": 1}) == '{"a": 1}' and isinstance(sys.modules["json"], types.ModuleType)


def test_inference_mode_decorator_is_torch_inference_mode():
    @inference_mode
    def double(x):
        return x * 2, torch.is_inference_mode_enabled()

    y, enabled = double(torch.ones(2, requires_grad=True))
    assert enabled and y.is_inference() and not y.requires_grad and not torch.is_inference_mode_enabled()
    assert double.__name__ == "double"


@pytest.mark.parametrize("device, expected", [("cpu", "cpu"), ("cuda:1", "cuda"), ("mps", "mps"), (torch.device("cuda", 0), "cuda")])
def test_a_named_device_has_its_type_without_torch(device, expected):
    assert runtime.device_type(device) == expected


def test_auto_is_the_cpu_with_a_torch_built_for_the_cpu_alone(monkeypatch):
    monkeypatch.setattr(runtime, "accelerator_build", lambda: False)
    assert runtime.device_type("auto") == runtime.device_type(None) == "cpu"
    monkeypatch.setattr(runtime, "accelerator_build", lambda: True)  # then torch is asked
    assert runtime.device_type("auto") == runtime.resolve_device("auto").type


def test_the_build_read_from_torch_version_is_what_torch_reports():
    runtime.accelerator_build.cache_clear()
    built = bool(torch.version.cuda or torch.version.hip or getattr(torch.version, "xpu", None))
    assert runtime.accelerator_build() is built


@pytest.mark.parametrize("dtype, device_type, name", [("auto", "cpu", "float32"), (None, "cuda", "bfloat16"),
                                                      ("bf16", "cpu", "bfloat16"), ("fp16", "cuda", "float16"),
                                                      (torch.float16, "cpu", "float16")])
def test_the_dtype_name_is_what_resolve_dtype_gives(dtype, device_type, name):
    assert runtime.dtype_name(dtype, device_type) == name
    assert runtime.resolve_dtype(dtype, torch.device(device_type)) == getattr(torch, name)


def test_an_unknown_dtype_is_refused_in_one_line():
    from zprune_cli.base.errors import ZpruneUsageError

    with pytest.raises(ZpruneUsageError, match=r"unknown dtype 'fp8' \(use auto, float32, float16 or bfloat16\)"):
        runtime.dtype_name("fp8", "cpu")
