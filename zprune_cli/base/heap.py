"""The C heap of an offloaded run: what glibc keeps of the memory freed between decoder blocks.

An offloaded prune allocates and frees the same tensors block after block. glibc serves an allocation above its
mmap threshold with a mapping of its own, returned whole when freed; below it, from the heap, whose freed holes
stay resident. The threshold is dynamic: freeing a mapped chunk raises it to that chunk's size, up to 32 MiB, so
after the first block the [out, 128] column blocks and [tokens, width] activations of a 7B or 13B layer (2 to 28
MiB) land on the heap, and its holes grew the peak block after block (SparseGPT at 13B: 5.78 GiB after block 2,
6.04 GiB by block 14). A fixed threshold of 4 MiB keeps those on their own mappings. On anything but glibc
(macOS, musl) both calls are absent and nothing changes.
"""

from __future__ import annotations

import ctypes
from typing import Callable

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 4 << 20  # measured at the 1.1B shape: up to 3% more CPU (page faults), 13% less peak


def _glibc(name: str) -> Callable[..., int] | None:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None


_MALLOC_TRIM = _glibc("malloc_trim")
_MALLOPT = _glibc("mallopt")
_fixed = False


def fix_mmap_threshold() -> None:
    """Serve every allocation of 4 MiB or more from a mapping of its own, for the rest of the process (setting
    the threshold also stops glibc raising it). Called once an offloaded model is made."""
    global _fixed
    if _MALLOPT is not None and not _fixed:
        _fixed = bool(_MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def return_freed_heap() -> None:
    """Give the heap freed with a block back to the system. glibc does not reuse what the temporaries of one
    block leave between blocks read from disk, so without this the resident memory of an offloaded prune grew
    with depth (a 512-wide Llama, 12 MiB blocks: 343 MiB with 8 blocks, 415 MiB with 24; trimmed: 291 and 292)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
