"""Save a model folder that plain `AutoModelForCausalLM.from_pretrained` loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from zprune_cli.base.lazy import lazy
from zprune_cli.base.staging import readable_mode
from zprune_cli.base.errors import ZpruneError

torch = lazy("torch")
nn = lazy("torch.nn")


def plain_model(model: nn.Module) -> nn.Module:
    """A model transformers will save: one loaded from GGUF is marked quantized and refuses
    save_pretrained, so rebuild it from its config (minus the quantization entry) and state dict."""
    if getattr(model, "hf_quantizer", None) is None and not getattr(model.config, "quantization_config", None):
        return model
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict({k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    rebuilt = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    missing, unexpected = rebuilt.load_state_dict(model.state_dict(), strict=False)
    tied = set(getattr(rebuilt, "_tied_weights_keys", None) or [])
    if unexpected or any(m not in tied for m in missing):
        raise ZpruneError(f"could not rebuild {type(model).__name__} for saving (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if hasattr(rebuilt, "tie_weights"):
        rebuilt.tie_weights()
    return rebuilt.to(next(model.parameters()).device).eval()


def save_model(model: nn.Module, tokenizer, folder: Path, dtype: torch.dtype | None = None,
               max_shard_size: str = "5GB") -> None:
    """save_pretrained, with floating-point weights stored in `dtype` (the model in memory is not
    touched: a cast copy is written) and files readable like any other (safetensors writes 0600)."""
    from zprune_cli.models.load import quiet_transformers

    plain = plain_model(model)
    state = None
    if dtype is not None:
        state, seen = {}, set()
        for name, tensor in plain.state_dict().items():
            if tensor.data_ptr() in seen:  # a tied weight (lm_head = embeddings): stored once, as transformers does
                continue
            seen.add(tensor.data_ptr())
            state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    with quiet_transformers():  # transformers draws its own shard-writing bar; ours already shows the step
        plain.save_pretrained(folder, max_shard_size=max_shard_size, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    if dtype is not None:
        _record_dtype(Path(folder) / "config.json", dtype)
    mode = readable_mode()
    for file in Path(folder).iterdir():
        if file.is_file():
            os.chmod(file, mode)


def _record_dtype(config_path: Path, dtype: torch.dtype) -> None:
    config = json.loads(config_path.read_text())
    name = str(dtype).removeprefix("torch.")
    for key in ("dtype", "torch_dtype"):
        if key in config or key == "dtype":
            config[key] = name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

