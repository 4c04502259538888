"""What this machine can hold: host memory (RAM and swap, under a container's limit), an accelerator's memory
and a folder's free disk. Used to refuse, before any work, sizes no run here could allocate."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v2, v1


def host_memory_bytes() -> int | None:
    """RAM (or the container's limit, if lower) plus swap; None where the system does not say."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
    limit = min([ram, *filter(None, (_read_int(Path(p)) for p in _CGROUP_LIMITS))])
    return limit + _swap_bytes()


def device_memory_bytes(device) -> int | None:
    """An accelerator's total memory; None for the CPU (whose memory is the host's) and devices torch cannot size."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    try:
        return int(torch.cuda.get_device_properties(device).total_memory)
    except (RuntimeError, AssertionError, ValueError):
        return None


def free_disk_bytes(folder: Path) -> int | None:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _swap_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("SwapTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _read_int(path: Path) -> int | None:
    """A cgroup limit in bytes; None when absent or unlimited ('max', or v1's huge sentinel)."""
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value < 1 << 60 else None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
