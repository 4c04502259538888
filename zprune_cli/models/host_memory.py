"""Refuse, before a weight is read, a whole-model load whose weights alone exceed the host's available memory.

Loaded whole (no --offload, or --offload cpu, which keeps the blocks in host memory), a Llama-2-7B in float32
is 25 GiB: on a 24 GiB machine the kernel killed the process minutes later, or the machine swapped. The size
is read from the safetensors headers of a local checkpoint (8 bytes and a JSON header per file, no weights),
the available memory from /proc/meminfo; when either is unknown (a hub id not downloaded yet, GGUF, another
OS) nothing is checked.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy
from zprune_cli.models.resolve import ModelSource

torch = lazy("torch")

GiB = 2**30


def checkpoint_params(folder: Path) -> int | None:
    """Floating-point parameters in the safetensors files of `folder`, from their headers; None without any."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for file in files:
            with open(file, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(min(length, 100 * 2**20)))
            total += sum(math.prod(t["shape"]) for name, t in header.items()
                         if name != "__metadata__" and t["dtype"] in ("F64", "F32", "F16", "BF16"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return None  # a damaged file: the loader says what is wrong with it
    return total


def available_memory() -> int | None:
    """MemAvailable (what can be allocated without swapping, page cache included) in bytes; None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_host_memory(source: ModelSource, dtype: torch.dtype) -> None:
    """One line naming --offload disk and the numbers when the weights in `dtype` exceed the available memory."""
    if not source.is_local or source.gguf_file is not None or not Path(source.location).is_dir():
        return
    params = checkpoint_params(Path(source.location))
    available = available_memory()
    if params is None or available is None:
        return
    need = params * torch.empty((), dtype=dtype).element_size()
    if need > available:
        raise ZpruneError(f"{source.spec} needs {need / GiB:.1f} GiB for its weights in "
                          f"{str(dtype).removeprefix('torch.')} ({params / 1e9:.2f} B parameters) and this machine has "
                          f"{available / GiB:.1f} GiB available; run it with --offload disk (one decoder block in "
                          "memory at a time)")
