"""Save an offloaded model block by block: each finished block becomes one safetensors shard as it is
released, the weights outside the blocks a last shard, then the index json, config and tokenizer, so
the folder loads with plain `AutoModelForCausalLM.from_pretrained` and the model is never whole in memory."""

from __future__ import annotations

import json
import os
from pathlib import Path

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy
from zprune_cli.models.blocks import find_blocks
from zprune_cli.models.save import _record_dtype
from zprune_cli.base.staging import readable_mode

torch = lazy("torch")
nn = lazy("torch.nn")

INDEX_FILE = "model.safetensors.index.json"


def _as_saved(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors under the names and in the layout `save_pretrained` writes (it reverts transformers' load-time
    conversions shard by shard: MoE experts one tensor per expert and projection, as Mixtral checkpoints hold
    them and serving engines read them), so a block-by-block save and a whole-model save hold the same files."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: the model's names are the checkpoint's
        return state
    return revert_weight_conversion(model, state)


class StreamingSave:
    """Listener for models.offload.on_done: writes a block's tensors when the engine finishes with it."""

    def __init__(self, model: nn.Module, folder: Path, dtype: torch.dtype | None = None, saved: dict | None = None):
        """saved: `state()` of an earlier process that wrote the first blocks' shards into `folder` (a resumed prune)."""
        self.model, self.folder, self.dtype = model, Path(folder), dtype
        self.blocks_name, blocks = find_blocks(model)
        self.n_shards = len(blocks) + 1  # one per block, then the weights outside the blocks
        self.weight_map: dict[str, str] = dict((saved or {}).get("weight_map", {}))
        self.total_size = int((saved or {}).get("total_size", 0))

    def state(self) -> dict:
        """What the shards written so far hold, for the index the last process writes."""
        return {"weight_map": dict(self.weight_map), "total_size": self.total_size}

    def __call__(self, index: int, prefix: str, block: nn.Module) -> None:
        self._write(index, block.state_dict(prefix=prefix))

    def _write(self, shard: int, state: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        name = f"model-{shard + 1:05d}-of-{self.n_shards:05d}.safetensors"
        tensors = {}
        for key, tensor in _as_saved(self.model, state).items():
            tensor = tensor.detach().to("cpu")
            if self.dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            tensors[key] = tensor.contiguous()
            self.total_size += tensor.numel() * tensor.element_size()
            self.weight_map[key] = name
        save_file(tensors, str(self.folder / name), metadata={"format": "pt"})

    def finish(self, tokenizer) -> None:
        """The weights outside the blocks (a tied LM head once, as save_pretrained does), index, config, tokenizer."""
        missing = self.n_shards - 1 - len({v for v in self.weight_map.values()})
        if missing:
            raise ZpruneError(f"{missing} decoder block(s) were never finished; the pruned model was not saved")
        outside, seen = {}, set()
        for key, tensor in self.model.state_dict().items():
            if key.startswith(f"{self.blocks_name}.") or tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            outside[key] = tensor
        self._write(self.n_shards - 1, outside)
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        self._write_config(tokenizer)

    def _write_config(self, tokenizer) -> None:
        from zprune_cli.models.load import quiet_transformers

        with quiet_transformers():
            self.model.config.save_pretrained(self.folder)
            generation = getattr(self.model, "generation_config", None)
            if generation is not None and self.model.can_generate():
                generation.save_pretrained(self.folder)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.folder)
        _record_dtype(self.folder / "config.json", self.dtype or next(self.model.parameters()).dtype)
        mode = readable_mode()
        for file in self.folder.iterdir():
            if file.is_file():
                os.chmod(file, mode)
