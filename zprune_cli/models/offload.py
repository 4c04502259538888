"""`--offload disk`: a model whose decoder blocks live on disk until they run (`--offload cpu`, blocks kept in
host memory instead, is models/offload_host.py, on the same `BlockResidency`).

DESIGN section 0: one decoder block in memory at a time, whatever the model's depth. The skeleton is
built on the meta device (buffers such as rotary inv_freq stay real), the weights outside the blocks
(embeddings, final norm, LM head) are read for real, and each block's parameters are read from the
safetensors shards only while the block is needed, then released back to meta. Two ways in:
- hooks: a forward pre-hook reads a block, a forward hook releases it (a whole-model forward works);
- `held(model, index)`: the engine keeps a block in memory across its loop over windows, and with
  done=True tells the listeners (a streaming save) that the block is final before it is released.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.heap import fix_mmap_threshold, return_freed_heap
from zprune_cli.base.lazy import lazy
from zprune_cli.models.blocks import block_prefix, find_blocks
from zprune_cli.models.checkpoint_names import CheckpointLayout
from zprune_cli.models.resolve import ModelSource

torch = lazy("torch")
nn = lazy("torch.nn")

OFFLOAD_MODES = ("none", "cpu", "disk")
INDEX_FILE = "model.safetensors.index.json"


class MemoryTracker:
    """Bytes of block parameters materialised now and at most: a deterministic peak for tests and logs."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0

    def reset(self) -> None:
        self.current = self.peak = 0

    def add(self, nbytes: int) -> None:
        self.current += nbytes
        self.peak = max(self.peak, self.current)


TRACKER = MemoryTracker()


def check_offload(mode: str) -> str:
    if mode not in OFFLOAD_MODES:
        raise ZpruneUsageError(f"unknown --offload '{mode}' (use none, cpu or disk)")
    return mode


def refuse_unreadable(source: ModelSource, config_only: bool = False) -> None:
    """Fail before any work when the checkpoint cannot be read block by block (safetensors only).
    `config_only` (a dry run reads the config alone): a folder with no weight files at all passes."""
    if source.gguf_file:
        raise ZpruneUsageError(f"--offload disk reads safetensors checkpoints; {source.spec} is a GGUF file "
                               "(run without --offload, or convert it to safetensors first)")
    if source.is_local and not (config_only and not source.weight_files):
        weight_map(Path(source.location), source.spec)


def weight_map(folder: Path, spec: str) -> dict[str, str]:
    """{tensor name: shard file name} from the index json (sharded) or the single model.safetensors."""
    index = folder / INDEX_FILE
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    single = folder / "model.safetensors"
    if not single.is_file():
        raise ZpruneUsageError(f"--offload disk reads safetensors checkpoints; {spec} has no model.safetensors "
                               f"or {INDEX_FILE} (a .bin checkpoint cannot be read block by block)")
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        return dict.fromkeys(f.keys(), single.name)


def read_tensors(folder: Path, files: dict[str, str], names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors, each shard opened once (safe_open maps the file; get_tensor copies one tensor)."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    out = {}
    for file, group in by_file.items():
        with safe_open(str(folder / file), "pt", device="cpu") as f:
            out.update({name: f.get_tensor(name) for name in group})
    return out


class BlockResidency:
    """One decoder block at a time on the device: `hold` and forward hooks materialise a block and release it.
    Subclasses say where the blocks live between runs (`materialise`, `release`)."""

    def __init__(self, model: nn.Module, device):
        self.blocks_name, self.blocks = find_blocks(model)
        self.device = device
        self.held: set[int] = set()
        self.auto: set[int] = set()  # materialised by a pre-hook, released by the forward hook
        self.listeners: list[Callable[[int, str, nn.Module], None]] = []

    def attach(self, model: nn.Module) -> None:
        fix_mmap_threshold()  # blocks allocate alike one after another: keep their large temporaries off the heap
        for i, block in enumerate(self.blocks):
            block.register_forward_pre_hook(self._pre_hook(i))
            block.register_forward_hook(self._post_hook(i))
        model._zprune_offload = self

    def is_materialised(self, index: int) -> bool:
        raise NotImplementedError

    def materialise(self, index: int) -> None:
        raise NotImplementedError

    def release(self, index: int, changed: bool = False) -> None:
        """Take block `index` off the device; `changed`: the engine finished changing it (pruned)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def hold(self, index: int, done: bool = False) -> Iterator[nn.Module]:
        self.materialise(index)
        self.held.add(index)
        self.auto.discard(index)  # a forward stopped early (at block 0) never reached its releasing hook
        finished = False
        try:
            yield self.blocks[index]
            if done:  # only a block that finished cleanly is handed to a streaming save
                for listener in self.listeners:
                    listener(index, block_prefix(self.blocks_name, index), self.blocks[index])
                finished = True
        finally:
            self.held.discard(index)
            self.release(index, changed=finished)

    def _pre_hook(self, index: int):
        def hook(module, args):
            if index not in self.held and not self.is_materialised(index):
                self.materialise(index)
                self.auto.add(index)

        return hook

    def _post_hook(self, index: int):
        def hook(module, args, output):
            if index in self.auto and index not in self.held:
                self.auto.discard(index)
                self.release(index)

        return hook


class OffloadedBlocks(BlockResidency):
    """--offload disk: each block read from the checkpoint while it runs, then dropped (a pruned block has been
    handed to the streaming save by then)."""

    def __init__(self, model: nn.Module, folder: Path, files: dict[str, str], layout: CheckpointLayout, device, dtype):
        super().__init__(model, device)
        self.folder, self.files, self.layout, self.dtype = folder, files, layout, dtype
        targets = set(layout.target.values())
        for i, block in enumerate(self.blocks):
            prefix = block_prefix(self.blocks_name, i)
            missing = [prefix + n for n, _ in block.named_parameters() if prefix + n not in targets]
            if missing:
                raise ZpruneError(f"the checkpoint names none of {', '.join(missing[:3])}; --offload disk needs a "
                                  "checkpoint saved with the model's own parameter names")
        self.attach(model)

    def is_materialised(self, index: int) -> bool:
        return not any(p.is_meta for p in self.blocks[index].parameters())

    def materialise(self, index: int) -> None:
        if self.is_materialised(index):
            return
        block, prefix = self.blocks[index], block_prefix(self.blocks_name, index)
        if not self.layout.direct:  # the checkpoint is in another layout: transformers converts it (checkpoint_names.py)
            self.layout.load(read_tensors(self.folder, self.files, self.layout.sources(prefix)), self.device, self.dtype)
            for param in block.parameters():
                param.requires_grad_(False)
                TRACKER.add(param.numel() * param.element_size())
            return
        names = [n for n, _ in block.named_parameters()]
        tensors = read_tensors(self.folder, self.files, [prefix + n for n in names])
        for name in names:
            tensor = tensors[prefix + name]
            tensor = tensor.to(self.device, self.dtype) if tensor.is_floating_point() else tensor.to(self.device)
            _set_parameter(block, name, tensor)
            TRACKER.add(tensor.numel() * tensor.element_size())

    def release(self, index: int, changed: bool = False) -> None:
        for name, param in list(self.blocks[index].named_parameters()):
            if not param.is_meta:
                TRACKER.add(-param.numel() * param.element_size())
                _set_parameter(self.blocks[index], name, torch.empty_like(param, device="meta"))
        return_freed_heap()


def _set_parameter(block: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = block.get_submodule(owner) if owner else block
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def offloaded(model: nn.Module) -> BlockResidency | None:
    return getattr(model, "_zprune_offload", None)


@contextlib.contextmanager
def held(model: nn.Module, index: int, done: bool = False) -> Iterator[None]:
    """Keep block `index` in memory for the body (a no-op for a model loaded whole)."""
    state = offloaded(model)
    if state is None:
        yield
        return
    with state.hold(index, done):
        yield


@contextlib.contextmanager
def on_done(model: nn.Module, listener: Callable[[int, str, nn.Module], None]) -> Iterator[None]:
    """Call listener(index, prefix, block) for each block finished under held(..., done=True)."""
    state = offloaded(model)
    if state is None:
        raise ZpruneError("a streaming save needs a model loaded with --offload disk")  # never --offload cpu: see verbs/pruning.py
    state.listeners.append(listener)
    try:
        yield
    finally:
        state.listeners.remove(listener)
