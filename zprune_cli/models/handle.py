"""A model spec resolved now and loaded only when first needed (cache hits never load it)."""

from __future__ import annotations

from functools import cached_property

from zprune_cli.base.lazy import lazy
from zprune_cli.models.host_memory import check_host_memory
from zprune_cli.models.load import check_hub_reachable, load_config, load_model, load_tokenizer
from zprune_cli.models.runtime import device_type, dtype_name, resolve_device, resolve_dtype
from zprune_cli.models.offload import check_offload, offloaded, refuse_unreadable
from zprune_cli.models.offload_load import load_offloaded
from zprune_cli.base.progress import NullProgress
from zprune_cli.models.resolve import ModelSource, resolve_model
from zprune_cli.base.settings import Settings
from zprune_cli.base.settings import resolve as resolve_settings

torch = lazy("torch")


class ModelHandle:
    def __init__(self, spec: str | ModelSource, device="auto", dtype="auto", revision=None, trust_remote_code=False,
                 offload: str = "none", config_only: bool = False):
        """`config_only`: for a dry run, which reads the config (and tokenizer) alone: a folder holding only
        config.json is accepted with --offload disk, as it is without."""
        self.source = spec if isinstance(spec, ModelSource) else resolve_model(spec, revision, trust_remote_code)
        check_hub_reachable(self.source)  # a hub model offline: every command fails here, at once, with one line
        self.offload = check_offload(offload)  # "disk": blocks read from safetensors while they run; "cpu": from host memory
        if self.offload == "disk":
            refuse_unreadable(self.source, config_only)  # before any data is read or any work is done
        self._asked = (device, dtype)  # resolved on first use: torch is imported then (base/lazy.py)
        self.device_type = device_type(device)
        if self.device_type != "cpu":  # an accelerator named: checked now, as the command's first step
            self.device = resolve_device(device)
        self.dtype_name = dtype_name(dtype, self.device_type)  # an unknown name is refused now
        self._loaded = None
        self.progress = None  # a verb's progress: loading shows a spinner with the model's name

    @classmethod
    def of(cls, model: "str | ModelSource | ModelHandle", settings: Settings | None = None, progress=None) -> "ModelHandle":
        """The handle itself when given one (library calls chained on one loaded model), else a new one on
        the settings' device and dtype. For a hub revision or remote code, build the handle yourself:
        ModelHandle("org/name", revision="v1", trust_remote_code=True)."""
        if not isinstance(model, ModelHandle):
            settings = resolve_settings(settings)
            model = cls(model, settings.device, settings.dtype, offload=settings.offload)
        model.progress = progress or model.progress
        return model

    def check_memory(self) -> None:
        """Before any work: refuse a whole-model load whose weights exceed the host's available memory."""
        if self.offload != "disk" and not self.loaded:
            check_host_memory(self.source, self.dtype)

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def _load(self):
        if self._loaded is None:
            progress = self.progress or NullProgress()
            with progress.task(f"Loading {self.source.spec} on {self.device} as {self.dtype_name}", None):
                if self.offload == "disk":
                    self._loaded = load_offloaded(self.source, self.device, self.dtype)
                else:
                    self._loaded = load_model(self.source, self.device, self.dtype, self.offload,
                                              tokenizer=self.__dict__.get("tokenizer"))  # cached_property's value, if read
                    if offloaded(self._loaded[0]) is not None:  # a GPU too small for the weights chose it
                        self.offload = "cpu"
        return self._loaded

    @cached_property
    def config(self):
        """The config, without loading the weights when they are not loaded yet."""
        return self._loaded[0].config if self._loaded is not None else load_config(self.source)

    @property
    def model(self):
        return self._load()[0]

    @cached_property
    def tokenizer(self):
        return self._loaded[1] if self._loaded is not None else load_tokenizer(self.source)

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self._asked[0])

    @cached_property
    def dtype(self) -> torch.dtype:
        return resolve_dtype(self._asked[1], self.device)
