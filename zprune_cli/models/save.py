"""Save a model folder that plain `AutoModelForCausalLM.from_pretrained` loads."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from zprune_cli.errors import ZpruneError


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


def save_model(model: nn.Module, tokenizer, folder: Path, max_shard_size: str = "5GB") -> None:
    from zprune_cli.models.load import quiet_transformers

    plain = plain_model(model)
    with quiet_transformers():  # transformers draws its own shard-writing bar; ours already shows the step
        plain.save_pretrained(folder, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
