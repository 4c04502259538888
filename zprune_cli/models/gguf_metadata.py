"""Read a GGUF file's header once per process.

transformers opens a GGUF file and parses its header (SmolLM2's holds its 49k-token vocabulary and merges:
about 3.5 s on one core) for the config, again inside `from_pretrained`, again for the tokenizer, and once
more to read the tensors. Inside `gguf_metadata_once`, the calls of one load share one `gguf.GGUFReader` per file
(the parsed header over a read-only memory map; tensors are read from it on demand), and the metadata-only
calls (`return_tensors=False`) share one result for the whole process, each caller getting its own copy. Files are keyed by path, size and
modification time. The GGUF-to-transformers tensor-name table is built once per load, not once per submodule.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from typing import Iterator

_READERS: dict[tuple, object] = {}
_METADATA: dict[tuple, dict] = {}


def _key(path) -> tuple:
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns


@contextlib.contextmanager
def gguf_metadata_once() -> Iterator[None]:
    try:
        import gguf
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # no GGUF support installed: no GGUF file is read
        yield
        return
    original_load, original_reader = gguf_utils.load_gguf_checkpoint, gguf.GGUFReader
    if getattr(original_load, "zprune_cached", False):  # nested: already in place
        yield
        return

    def reader(path, *args, **kwargs):
        if args or kwargs:  # a mode other than read-only: not shared
            return original_reader(path, *args, **kwargs)
        key = _key(path)
        if key not in _READERS:
            _READERS[key] = original_reader(path)
        return _READERS[key]

    def load_gguf_checkpoint(path, return_tensors=False, model_to_load=None, **kwargs):
        if return_tensors or model_to_load is not None or kwargs:
            return original_load(path, return_tensors=return_tensors, model_to_load=model_to_load, **kwargs)
        key = _key(path)
        if key not in _METADATA:
            _METADATA[key] = original_load(path, return_tensors=False)
        return copy.deepcopy(_METADATA[key])  # callers may change what they get

    load_gguf_checkpoint.zprune_cached = True
    original_names = gguf.get_tensor_name_map
    # transformers' get_gguf_hf_weights_map rebuilds this name table (every tensor name of every block) once per
    # submodule of the model, recursively: 397 times for SmolLM2, 6 s of CPU per load; it is read-only
    names = functools.lru_cache(maxsize=None)(original_names)
    gguf_utils.load_gguf_checkpoint, gguf.GGUFReader, gguf.get_tensor_name_map = load_gguf_checkpoint, reader, names
    try:
        yield
    finally:
        gguf_utils.load_gguf_checkpoint, gguf.GGUFReader = original_load, original_reader
        gguf.get_tensor_name_map = original_names
        _READERS.clear()  # a reader maps the whole file: kept for one load only, the metadata for the process
