"""Build a model for `--offload disk`: the skeleton on meta, the weights outside the blocks for real,
the blocks left on disk (models/offload.py reads each one while it runs)."""

from __future__ import annotations

import logging
from pathlib import Path

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError, first_line
from zprune_cli.base.lazy import lazy
from zprune_cli.models.blocks import find_blocks
from zprune_cli.models.checkpoint_names import CheckpointLayout
from zprune_cli.models.offload import OffloadedBlocks, read_tensors, refuse_unreadable, weight_map
from zprune_cli.models.resolve import ModelSource

torch = lazy("torch")


def checkpoint_folder(source: ModelSource) -> Path:
    """The local folder holding the safetensors shards: the folder itself, or the hub snapshot."""
    refuse_unreadable(source)
    if source.is_local:
        return Path(source.location)
    from huggingface_hub import snapshot_download

    from zprune_cli.models.load import check_hub_reachable

    check_hub_reachable(source)
    try:  # weights and configs only: a snapshot may also hold .bin or .gguf copies we never read
        return Path(snapshot_download(source.location, revision=source.revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except (OSError, ValueError) as exc:
        raise ZpruneError(f"could not fetch {source.spec} for --offload disk: {first_line(exc)}") from exc


def load_offloaded(source: ModelSource, device: torch.device, dtype: torch.dtype):
    """Return (model, tokenizer) like load_model, with the decoder blocks' parameters on meta."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM

    from zprune_cli.models.load import load_tokenizer, quiet_transformers

    folder = checkpoint_folder(source)
    files = weight_map(folder, source.spec)
    with quiet_transformers():
        config = AutoConfig.from_pretrained(folder, trust_remote_code=source.trust_remote_code)
        with init_empty_weights():  # parameters on meta, buffers (rotary inv_freq) real
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=source.trust_remote_code)
    blocks_name, _ = find_blocks(model)
    layout = CheckpointLayout(model, list(files))
    outside = read_tensors(folder, files, layout.sources(f"{blocks_name}.", inside=False))
    if layout.direct:
        for name, tensor in outside.items():
            tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
            set_module_tensor_to_device(model, name, device, value=tensor)
    else:
        layout.load(outside, device, dtype)
    for name, buffer in list(model.named_buffers()):  # as load_model's model.to(device, dtype) does (rotary inv_freq)
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        module._buffers[leaf] = buffer.to(device, dtype) if buffer.is_floating_point() else buffer.to(device)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # a tied LM head is not in the checkpoint: it shares the embeddings
    left = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(f"{blocks_name}.")]
    if left:
        raise ZpruneUsageError(f"--offload disk: the checkpoint of {source.spec} lacks {', '.join(left[:3])} "
                               "under the model's own names; run without --offload")
    model._zprune_offload = OffloadedBlocks(model, folder, files, layout, device, dtype)
    model.eval()
    model.config.use_cache = False
    logging.getLogger("zprune").debug("built %s with its blocks on disk (%s)", source.spec, folder)
    return model, load_tokenizer(source)
