"""What both loaders (`load.py` for transformers' formats, `pretrained.py` for zprune's sparse export) share:
the device and dtype a command asked for, and transformers kept quiet while it loads. Its own module so that
the two loaders import it, never each other."""

from __future__ import annotations

import contextlib
import io

import torch

from zprune_cli.base import distributed
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.base.hub import quiet_hub_logging

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


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
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise ZpruneUsageError(f"unknown dtype '{dtype}' (use auto, float32, float16 or bfloat16)")
    return DTYPES[dtype]


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
