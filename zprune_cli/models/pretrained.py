"""Load any zprune folder back: a pruned folder or an `hf` export (plain transformers), a `sparse` or
`sparse-24-bitmask` export (decompressed tensor by tensor into the config's model class)."""

from __future__ import annotations

from pathlib import Path

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy
from zprune_cli.formats.reader import WeightReader
from zprune_cli.base.errors import first_line
from zprune_cli.models.runtime import dtype_name, quiet_transformers, resolve_device

torch = lazy("torch")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None):
    """Load a zprune output folder, an `hf`, `sparse` or `sparse-24-bitmask` export; return the model,
    as `AutoModelForCausalLM.from_pretrained` does (`load_tokenizer(path)` gives the tokenizer).

    The weights come back dense and bit-identical to the pruned model; dtype=None keeps the stored dtype
    (as the config records it), a dtype casts after loading. The model is in eval mode on `device`.
    """
    from transformers import AutoModelForCausalLM

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ZpruneError(f"{path} is not a folder")
    target_device = resolve_device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype_name(dtype, target_device.type))
    reader = WeightReader(folder)
    try:
        with quiet_transformers():
            if reader.kind == "dense":
                model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
            else:
                model = _from_state_dict(folder, reader)
    except (OSError, ValueError) as exc:
        raise ZpruneError(f"could not load {folder}: {first_line(exc)}") from exc
    if dtype is not None:
        model.to(dtype=dtype)
    model.to(target_device)
    model.eval()
    return model


def load_tokenizer(path: str | Path):
    """The tokenizer saved in a zprune folder or export; None when the folder holds no tokenizer files."""
    from transformers import AutoTokenizer

    folder = Path(path).expanduser()
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return None
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ZpruneError(f"could not load the tokenizer in {folder}: {first_line(exc)}") from exc


def _from_state_dict(folder: Path, reader: WeightReader):
    """Build the model class of folder/config.json around the decompressed tensors (no random init)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the compressed-tensors entry of a 2:4 export: we decompress ourselves
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ZpruneError(f"{folder}: transformers has no causal-LM class for model type {config.model_type!r}")
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    model, info = model_class.from_pretrained(
        None, config=config, state_dict=dict(reader.items()), dtype="auto", output_loading_info=True
    )
    tied = set(getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in info.get("missing_keys", []) if k not in tied]
    unexpected = list(info.get("unexpected_keys", []))
    if missing or unexpected:
        what = f"no tensor for {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise ZpruneError(f"{folder} does not match its config.json ({what})")
    return model
