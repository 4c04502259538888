"""An estimate held against this machine: the wall time its work takes at the rates measured now, and
whether its memory peaks fit, with the --offload that would fit when they do not."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from zprune_cli.base.lazy import lazy
from zprune_cli.estimation.estimate import Estimate, Target
from zprune_cli.estimation.throughput import Throughput

torch = lazy("torch")

OFFLOAD_ORDER = ("none", "cpu", "disk")  # each spares more memory than the one before


@dataclass(frozen=True)
class Memory:
    """What this machine has: total host memory, and the device's (None on the CPU, where it is the host)."""

    host_bytes: int | None
    device_bytes: int | None = None

    def fits(self, e: Estimate) -> bool:
        host = self.host_bytes is None or e.host_peak_bytes <= self.host_bytes
        return host and (self.device_bytes is None or e.device_peak_bytes <= self.device_bytes)


def machine_memory(device: torch.device) -> Memory:
    device_bytes = None
    if device.type == "cuda":
        device_bytes = int(torch.cuda.get_device_properties(device).total_memory)
    return Memory(_host_total(), device_bytes)


def _host_total() -> int | None:
    """MemTotal from /proc/meminfo (Linux), else what the OS reports through sysconf; None if neither."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def timed(e: Estimate, rates: Throughput) -> Estimate:
    """`e` with its time estimate: each step's FLOPs and selected weights at the measured rates."""
    steps = {name: rates.seconds(w["flops"], w["selected"]) for name, w in e.work.items()}
    return replace(e, time_estimate={
        "seconds": sum(steps.values()), "by_step": steps, "flops": sum(w["flops"] for w in e.work.values()),
        "selected": sum(w["selected"] for w in e.work.values()), "flops_per_s": rates.flops_per_s,
        "selected_per_s": rates.selected_per_s,
        "not_counted": "loading the model (and parsing a GGUF header), start-up, tokenising, saving"})


def checked(estimate: Callable[[Target], Estimate], target: Target, memory: Memory,
            modes: Sequence[str] = OFFLOAD_ORDER) -> Estimate:
    """`estimate(target)` with its memory check: whether the peaks fit `memory`, and if not, the first of the
    later `modes` (those the run accepts: --offload disk needs a safetensors checkpoint) whose estimate fits,
    or the last one, which does not fit either."""
    e = estimate(target)
    check = {"host_memory_bytes": memory.host_bytes, "device_memory_bytes": memory.device_bytes, "fits": memory.fits(e),
             "offload": None, "offload_fits": None, "offload_host_peak_bytes": None, "offload_device_peak_bytes": None}
    later = [m for m in modes if OFFLOAD_ORDER.index(m) > OFFLOAD_ORDER.index(target.offload)]
    if not check["fits"] and later:
        for mode in later:
            other = estimate(replace(target, offload=mode))
            if memory.fits(other) or mode == later[-1]:
                break
        check.update(offload=mode, offload_fits=memory.fits(other), offload_host_peak_bytes=other.host_peak_bytes,
                     offload_device_peak_bytes=other.device_peak_bytes)
    return replace(e, memory_check=check)


def accepted_offloads(gguf: bool, whole_model_work: bool) -> tuple[str, ...]:
    """The --offload modes a run accepts: disk reads safetensors checkpoints block by block (not a GGUF file),
    and cannot run zero-shot tasks or --speed (`whole_model_work`), which need the whole model per request."""
    return OFFLOAD_ORDER if not (gguf or whole_model_work) else OFFLOAD_ORDER[:2]
