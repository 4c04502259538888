"""What both loaders (`load.py` for transformers' formats, `pretrained.py` for zprune's sparse export) share:
the device and dtype a command asked for, and transformers kept quiet while it loads. Its own module so that
the two loaders import it, never each other."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
from pathlib import Path

from zprune_cli.base import distributed
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.base.hub import quiet_hub_logging
from zprune_cli.base.lazy import lazy

torch = lazy("torch")

# the names a command accepts -> torch's (names, not dtypes: reading torch.float32 would import torch)
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' means the first CUDA device when there is one, else the CPU."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ZpruneUsageError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ZpruneUsageError(f"device '{device}' asked for, but torch sees no CUDA device")
    if resolved.type == "cuda" and resolved.index is None and distributed.active():
        resolved = torch.device("cuda", distributed.local_rank())  # torchrun: one GPU per process on a node
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' is float32 on the CPU (half precision is slow there) and bfloat16 on accelerators."""
    return getattr(torch, dtype_name(dtype, device.type))


def dtype_name(dtype: str | torch.dtype | None, device_type: str) -> str:
    """The name of the dtype `dtype` resolves to on a device of `device_type` ('float32'), without torch."""
    if dtype is None or dtype == "auto":
        return "float32" if device_type == "cpu" else "bfloat16"
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise ZpruneUsageError(f"unknown dtype '{dtype}' (use auto, float32, float16 or bfloat16)")
        return DTYPE_NAMES[dtype]
    return str(dtype).removeprefix("torch.")


def device_type(device: str | torch.device | None) -> str:
    """The type ('cpu', 'cuda', ...) of the device `resolve_device(device)` gives. Without importing torch where
    the answer is known: a named device, or 'auto' with a torch built for the CPU alone (no CUDA to find)."""
    if device is None or str(device) == "auto":
        return "cpu" if not accelerator_build() else resolve_device(device).type
    return str(device).split(":")[0]


@functools.cache
def accelerator_build() -> bool:
    """Whether the installed torch was built for CUDA, ROCm or XPU, read from its `torch/version.py` (what
    `torch.version.cuda` reports) without importing torch; True when that cannot be told."""
    spec = importlib.util.find_spec("torch")
    try:
        path = Path(spec.submodule_search_locations[0]) / "version.py"
        namespace: dict = {}
        exec(compile(path.read_text(), str(path), "exec"), namespace)  # plain assignments
    except Exception:  # noqa: BLE001  (any layout we do not know: ask torch itself)
        return True
    return any(namespace.get(name) for name in ("cuda", "hip", "rocm", "xpu"))


@contextlib.contextmanager
def quiet_transformers():
    # GGUF loading prints tqdm bars and notices on stderr; our own progress owns the terminal.
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    quiet_hub_logging()  # the hub client's retry warnings go to a handler of their own, not through stderr's redirect
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
