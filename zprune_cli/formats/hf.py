"""The `hf` layout: a plain Hugging Face folder (dense safetensors shards + index) that
`AutoModelForCausalLM.from_pretrained` loads as is, with the provenance in every shard's metadata."""

from __future__ import annotations

from typing import Any

from zprune_cli.base.lazy import lazy

torch = lazy("torch")


FORMAT_NAME = "hf"
PREFIX = "model"

# Entries that would send transformers to a quantizer: a pruned folder's weights are plain tensors.
_COMPRESSION_KEYS = ("quantization_config", "compression_config", "sparsity_config")


def clean_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json without quantization or sparsity entries (stale if the source was itself an export)."""
    return {k: v for k, v in config.items() if k not in _COMPRESSION_KEYS}


def encode(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: tensor}
