"""Which checkpoint tensors hold which of the model's parameters, for reading a model block by block.

transformers 5 saves some families in their original layout and converts them on load: GPT-NeoX's
`embed_out`, a vision-language model's `language_model.*`, MoE experts stored one Linear per expert
(`experts.0.w1.weight`, ...) but held fused as one [experts, out, in] tensor. `--offload disk` reads a
subset of the checkpoint at a time, so it asks transformers' own conversion table where each checkpoint
tensor goes, and loads a subset through transformers' own loader. A checkpoint already in the model's
names (most families, and every zprune output) is read directly.
"""

from __future__ import annotations

import logging

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy

torch = lazy("torch")
nn = lazy("torch.nn")

log = logging.getLogger("zprune")


def _transforms(model: nn.Module) -> list:
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:  # transformers 4: checkpoints are read in the model's own names
        return []
    try:
        return list(get_model_conversion_mapping(model))
    except Exception as exc:  # a model transformers has no table for (remote code): names as they are
        log.debug("no weight conversion table for %s: %s", type(model).__name__, exc)
        return []


class CheckpointLayout:
    """The model parameter each checkpoint tensor loads into (`target`), and loading a subset of them."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model = model
        self.transforms = _transforms(model)
        meta = model.state_dict()
        foreign = [name for name in names if name not in meta]  # a checkpoint in the model's names has none
        self.target = {name: name for name in names} | dict(zip(foreign, self._targets(foreign, meta)))
        self.direct = all(name == target for name, target in self.target.items())

    def _targets(self, names: list[str], meta: dict) -> list[str]:
        """The model parameter of each checkpoint name, renamed and converted as transformers loads it."""
        if not self.transforms or not names:
            return names
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        renamings = [t for t in self.transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in self.transforms if isinstance(t, WeightConverter)]
        prefix = getattr(self.model, "base_model_prefix", None)
        return [rename_source_key(name, renamings, converters, prefix, meta)[0] for name in names]

    def sources(self, prefix: str, inside: bool = True) -> list[str]:
        """Checkpoint names whose parameters lie under `prefix` (inside=False: those that do not)."""
        return [name for name, target in self.target.items() if target.startswith(prefix) == inside]

    def load(self, tensors: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> None:
        """Put `tensors` (checkpoint names) into the model's parameters, converted as transformers would."""
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig

        from transformers.utils import logging as hf_logging

        config = LoadStateDictConfig(device_map={"": device}, dtype=dtype, weight_mapping=self.transforms)
        hf_logging.disable_progress_bar()  # its "Loading weights" bar, once per block; our progress owns stderr
        try:
            info, _ = convert_and_load_state_dict_in_model(self.model, tensors, config)
        finally:
            hf_logging.enable_progress_bar()
        if info.mismatched_keys or info.conversion_errors:
            wrong = [f"{n} {list(a)} vs {list(b)}" for n, a, b in list(info.mismatched_keys)[:3]]
            raise ZpruneError(f"--offload disk could not read the checkpoint into the model: "
                              f"{', '.join(wrong) or next(iter(info.conversion_errors.values()))}")


def checkpoint_targets(folder, names: list[str]) -> dict[str, str]:
    """{checkpoint name: model parameter name} for the model saved in `folder`, built on meta from its config
    (transformers saves MoE experts one tensor per expert, the model holds them fused)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return CheckpointLayout(model, names).target
