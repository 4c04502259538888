"""Several processes under `torchrun`: who am I, which windows are mine, and the few collectives we need.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in each worker's environment. A run with one process
never touches torch.distributed: every function here is then the identity (or a no-op), so the
single-process path keeps its behaviour and its speed.

Windows are split in contiguous shards, rank order = window order, so gathering the shards and adding
up the statistics in rank order is what one process would have done (up to float summation order).
"""

from __future__ import annotations

import atexit
import os
from typing import Any, Sequence

from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.base.lazy import lazy

torch = lazy("torch")


def active() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if active() else 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    return rank() == 0


def start(device: torch.device, n_windows: int) -> None:
    """Check the split, then join the process group (once): NCCL on CUDA, gloo otherwise.

    The check runs before any collective, on every rank alike, so a bad split fails everywhere at once."""
    if not active():
        return
    if world() > n_windows:
        raise ZpruneUsageError(f"{world()} processes for {n_windows} calibration window(s): every process needs at "
                               f"least one window; use --nproc-per-node {n_windows} or fewer, or raise --nsamples")
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and object collectives use the current device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    atexit.register(_stop)


def _stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int) -> range:
    """This rank's windows: contiguous, sizes differing by at most one, rank 0 first."""
    return _shard_of(rank(), n)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of `obj` on every rank (picklable, small: a decision, a manifest)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    if not active():
        return [obj]
    import torch.distributed as dist

    boxes: list[Any] = [None] * world()
    dist.all_gather_object(boxes, obj)
    return boxes


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place, in its own dtype (fp64 sums stay fp64)."""
    if not active():
        return
    import torch.distributed as dist

    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def gather_windows(local: torch.Tensor, n: int) -> torch.Tensor | None:
    """Rank 0 gets all `n` windows [n, ...] in order from every rank's shard [len(shard(n)), ...]; the others get None.

    Shards differ by one window at most: each is padded to the largest for the collective, then trimmed."""
    if not active():
        return local
    import torch.distributed as dist

    biggest = -(-n // world())
    padded = torch.zeros((biggest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world())] if is_main() else None
    dist.gather(padded, parts, dst=0)
    if not is_main():
        return None
    sizes = [len(_shard_of(r, n)) for r in range(world())]
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def _shard_of(r: int, n: int) -> range:
    size, extra = divmod(n, world())
    begin = r * size + min(r, extra)
    return range(begin, begin + size + (r < extra))


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()
