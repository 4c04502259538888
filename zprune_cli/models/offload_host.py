"""`--offload cpu`: the decoder blocks' weights stay in host memory; each block is copied to the device while it
runs and copied back only when the engine changed it (pruned it).

For a model that fits host memory but not the accelerator: peak device memory is the weights outside the blocks
(embeddings, final norm, LM head), one block and its activations, whatever the depth. The rest of the engine
sees a model loaded whole (the pruned weights live in host memory, so several recipes, snapshots, `--masks`
and zero-shot tasks work as without offload). On a GPU, a model larger than the free device memory is put
this way by itself (`place`), with a warning saying so.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from zprune_cli.models.offload import TRACKER, BlockResidency

log = logging.getLogger("zprune")
HOST = torch.device("cpu")
# Share of the free device memory the weights may take and still be loaded whole: the rest is for activations,
# statistics and the methods' temporaries (a block's worth, usually far less).
DEVICE_SHARE = 0.85


class HostBlocks(BlockResidency):
    """Blocks held on the host; `materialise` copies one to the device (always a copy: on a CPU-only machine the
    device copy is still separate, so a change that is not written back is lost, as it would be on a GPU)."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__(model, device)
        self.host: dict[int, dict[str, nn.Parameter]] = {}  # the host parameters of each block on the device
        self.attach(model)

    def is_materialised(self, index: int) -> bool:
        return index in self.host

    def materialise(self, index: int) -> None:
        if index in self.host:
            return
        block = self.blocks[index]
        self.host[index] = dict(block.named_parameters())
        for name, param in self.host[index].items():
            _put(block, name, nn.Parameter(param.data.to(self.device, copy=True), requires_grad=False))
            TRACKER.add(param.numel() * param.element_size())

    def release(self, index: int, changed: bool = False) -> None:
        host = self.host.pop(index, None)
        if host is None:
            return
        block = self.blocks[index]
        with torch.no_grad():
            for name, param in list(block.named_parameters()):
                if changed:
                    host[name].data.copy_(param.data)
                _put(block, name, host[name])
                TRACKER.add(-param.numel() * param.element_size())


def _put(block: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    (block.get_submodule(owner) if owner else block)._parameters[leaf] = param


def keep_blocks_on_host(model: nn.Module, device: torch.device) -> None:
    """Move everything but the blocks' parameters to `device` (the blocks' buffers too: rotary tables are small
    and read at every call), and attach the HostBlocks that carry each block over while it runs."""
    residency = HostBlocks(model, device)
    in_blocks = {id(p) for block in residency.blocks for p in block.parameters()}
    with torch.no_grad():
        for name, param in list(model.named_parameters()):
            if id(param) not in in_blocks and param.device != device:
                param.data = param.data.to(device)
        for name, buffer in list(model.named_buffers()):
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            module._buffers[leaf] = buffer.to(device)


def place(model: nn.Module, device: torch.device, offload: str) -> str:
    """Put a model loaded on the host where it will run: whole on `device`, or its blocks kept on the host
    (--offload cpu, or a GPU too small for the weights). Returns the offload mode in effect."""
    if offload == "cpu" or not _fits(model, device):
        if offload != "cpu":
            log.warning(f"the model's weights ({_gib(_bytes(model))}) do not fit the free memory of {device} "
                        f"({_gib(_free(device))}): its decoder blocks stay in host memory and each is copied to "
                        f"{device} while it runs (--offload cpu; --offload disk also spares host memory)")
        keep_blocks_on_host(model, device)
        return "cpu"
    model.to(device)
    return offload


def _fits(model: nn.Module, device: torch.device) -> bool:
    if device.type != "cuda":  # the host is the device: nothing to spare by keeping blocks apart
        return True
    return _bytes(model) <= DEVICE_SHARE * _free(device)


def _bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _free(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0]


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
