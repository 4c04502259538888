"""Load a resolved model and its tokenizer onto one device, in one dtype."""

from __future__ import annotations

import logging

from zprune_cli.base.errors import ZpruneError, first_line
from zprune_cli.base.hub import check_reachable, in_cache, offline
from zprune_cli.base.lazy import lazy
from zprune_cli.models.host_memory import check_host_memory
from zprune_cli.models.resolve import ModelSource
from zprune_cli.models.gguf_metadata import gguf_metadata_once
from zprune_cli.models.runtime import DTYPE_NAMES, dtype_name, quiet_transformers, resolve_device, resolve_dtype  # noqa: F401  (importable from here)

torch = lazy("torch")


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    kwargs = _common_kwargs(source)
    check_hub_reachable(source)
    try:
        with quiet_transformers(), gguf_metadata_once():
            return AutoTokenizer.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError) as exc:
        raise ZpruneError(f"could not load the tokenizer of {source.spec}: {first_line(exc)}") from exc


def load_model(source: ModelSource, device: torch.device, dtype: torch.dtype, offload: str = "none", tokenizer=None):
    """Return (model, tokenizer), the model in eval mode on `device` with no KV cache; with offload "cpu" (or on
    a GPU too small for it) its decoder blocks stay in host memory, one copied to `device` at a time. A tokenizer
    loaded already (calibration draws its windows before the model loads) is handed back, not built again."""
    from transformers import AutoModelForCausalLM

    from zprune_cli.models.offload_host import HOST, place

    if source.is_local and source.gguf_file is None and _compressed_export(source.location):
        from zprune_cli.models import pretrained

        model = pretrained.load_pretrained(source.location, HOST, dtype)
        place(model, device, offload)
        model.config.use_cache = False
        return model, tokenizer if tokenizer is not None else pretrained.load_tokenizer(source.location)
    kwargs = _common_kwargs(source)
    check_hub_reachable(source)
    check_host_memory(source, dtype)  # the whole model is loaded on the host first, whatever the device
    try:
        with quiet_transformers(), gguf_metadata_once():
            model = AutoModelForCausalLM.from_pretrained(source.location, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        hint = ""
        if not source.is_local:
            hint = " (no network? pass a local folder or .gguf file, or set HF_HUB_OFFLINE=1 with a cached copy)"
        raise ZpruneError(f"could not load model {source.spec}: {first_line(exc)}{hint}") from exc
    model.to(dtype=dtype)
    place(model, device, offload)
    model.eval()
    model.config.use_cache = False
    logging.getLogger("zprune").debug("loaded %s on %s as %s", source.spec, device, dtype)
    return model, tokenizer if tokenizer is not None else load_tokenizer(source)


def _compressed_export(folder: str) -> bool:
    """A zprune `sparse` or `sparse-24-bitmask` export, which plain transformers cannot load."""
    from pathlib import Path

    from zprune_cli.formats.reader import layout_of

    return Path(folder, "config.json").is_file() and layout_of(Path(folder)) != "dense"


def source_dtype(source: ModelSource) -> torch.dtype | None:
    """The precision the model was published in: bfloat16 for a GGUF file (dequantised from 4 bits,
    so 16 bits lose nothing), else the config's dtype; None when the config does not say."""
    if source.gguf_file:
        return torch.bfloat16
    name = None
    if source.is_local:
        import json
        from pathlib import Path

        try:
            config = json.loads((Path(source.location) / "config.json").read_text())
            name = config.get("torch_dtype") or config.get("dtype")
        except (OSError, ValueError):
            return None
    else:
        check_hub_reachable(source)  # the hub client alone retries for 25 s, printing each retry
        try:
            from transformers import AutoConfig

            with quiet_transformers():
                config = AutoConfig.from_pretrained(source.location, **_common_kwargs(source))
            name = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        except (OSError, ValueError):
            return None
    name = str(name).removeprefix("torch.") if name else None
    return getattr(torch, DTYPE_NAMES[name]) if name in DTYPE_NAMES else None


def parse_dtype(name: str | None) -> torch.dtype | None:
    """'float32', 'bf16', ... -> torch.dtype; None or 'auto' -> None (decided by the caller)."""
    if name is None or name == "auto":
        return None
    return getattr(torch, dtype_name(name, "cpu"))  # an unknown name is refused


def check_hub_reachable(source: ModelSource) -> None:
    """A hub model: the hub must answer, or with HF_HUB_OFFLINE its config must be in the local hub cache.
    One quick line either way, the same for every command (ModelHandle checks when it resolves the spec)."""
    if source.is_local:
        return
    if not offline():
        check_reachable(f"model {source.spec}", "pass a local folder or .gguf file, or set HF_HUB_OFFLINE=1 to use a cached download")
    elif not in_cache(source.location, source.revision):
        raise ZpruneError(f"model {source.spec} is not in the local hub cache and HF_HUB_OFFLINE is set; pass a local "
                          "folder or .gguf file, or download it first (with a network, HF_HUB_OFFLINE unset)")


def load_config(source: ModelSource):
    """The model's config alone (no weights): enough for its maximum length and layer shapes."""
    from transformers import AutoConfig

    check_hub_reachable(source)
    try:
        with quiet_transformers(), gguf_metadata_once():
            return AutoConfig.from_pretrained(source.location, **_common_kwargs(source))
    except (OSError, ValueError) as exc:
        hint = "" if source.is_local else " (offline? pass a local folder or .gguf file, or a model already in the hub cache)"
        raise ZpruneError(f"could not load model {source.spec} (its config): {first_line(exc)}{hint}") from exc


def max_length(model_or_config) -> int | None:
    """The longest sequence the model was built for, or None when the config does not say."""
    base = getattr(model_or_config, "config", model_or_config)
    config = getattr(base, "get_text_config", lambda: base)()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def hidden_width(model_or_config) -> int | None:
    """The width of a decoder block's input (the text model's hidden size), or None when the config does not say."""
    base = getattr(model_or_config, "config", model_or_config)
    config = getattr(base, "get_text_config", lambda: base)()
    value = getattr(config, "hidden_size", None)
    return value if isinstance(value, int) and value > 0 else None


def _common_kwargs(source: ModelSource) -> dict:
    kwargs: dict = {"trust_remote_code": source.trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if source.revision and not source.is_local:
        kwargs["revision"] = source.revision
    return kwargs

