"""The size of a statistics-store entry, by the same arithmetic the store's files follow.

A safetensors file is an 8-byte length, a compact JSON header (padded to 8 bytes) and the raw tensors;
the manifest is JSON written with indent=1. Tensor bytes are exact; the manifest's settings are
approximated by a stand-in of the same shape (paths and descriptions are not known before the run).
"""

from __future__ import annotations

import json

from zprune_cli.base.lazy import lazy
from zprune_cli.estimation.shape import ModelShape
from zprune_cli.base.settings import Calibration
from zprune_cli.stats.store import FORMAT_VERSION

torch = lazy("torch")

_CODES = {"float64": "F64", "float32": "F32", "bfloat16": "BF16", "float16": "F16", "int64": "I64"}  # by torch's name
SUMSQ_BYTES = 8  # float64 (stats/collect.py sumsq_dtype)
GRAM_BYTES = 4  # float32 (stats/collect.py gram_dtype)


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def safetensors_bytes(tensors: list[tuple[str, torch.dtype, list[int]]]) -> int:
    """File size of save_file({name: tensor of dtype and shape})."""
    header, offset = {}, 0
    for name, dtype, shape in tensors:
        nbytes = element_size(dtype)
        for dim in shape:
            nbytes *= dim
        header[name] = {"dtype": _CODES.get(str(dtype).removeprefix("torch."), "F32"), "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = len(json.dumps(header, separators=(",", ":")))
    return 8 + (text + 7) // 8 * 8 + offset


def inputs_bytes(shape: ModelShape, dtype: torch.dtype, cal: Calibration) -> int:
    """inputs.safetensors: token ids [n, seqlen] int64 and block 0's inputs [n, seqlen, hidden]."""
    return safetensors_bytes([("input_ids", torch.int64, [cal.nsamples, cal.seqlen]),
                              ("hidden", dtype, [cal.nsamples, cal.seqlen, shape.hidden])])


def block_bytes(shape: ModelShape, index: int, gram: bool) -> int:
    """block_NNN.safetensors: per input group `<leader>.sumsq` and `<leader>.sum` [in] float64 (+ `<leader>.gram`
    [in, in] float32)."""
    tensors: list[tuple[str, torch.dtype, list[int]]] = []
    for g in shape.groups[index]:
        tensors.append((f"{g.members[0]}.sumsq", torch.float64, [g.width]))
        tensors.append((f"{g.members[0]}.sum", torch.float64, [g.width]))
        if gram:
            tensors.append((f"{g.members[0]}.gram", torch.float32, [g.width, g.width]))
    return safetensors_bytes(tensors)


def entry_bytes(shape: ModelShape, dtype: torch.dtype, cal: Calibration, gram: bool, propagated: bool = False,
                blocks_stored: bool = True) -> int:
    """A whole entry: the dense one (inputs + blocks + manifest; `blocks_stored` False: block 0's inputs
    only, what pruned propagation starts from), or the statistics a pruned-propagation run keeps (blocks +
    manifest, no inputs)."""
    blocks = [block_bytes(shape, i, gram) for i in range(shape.n_blocks)] if blocks_stored else []
    files = {f"block_{i:03d}.safetensors": size for i, size in enumerate(blocks)}
    if not propagated:
        files["inputs.safetensors"] = inputs_bytes(shape, dtype, cal)
    return sum(files.values()) + _manifest_bytes(shape, dtype, cal, gram, files, propagated, blocks_stored)


def _manifest_bytes(shape: ModelShape, dtype: torch.dtype, cal: Calibration, gram: bool, files: dict, propagated: bool,
                    blocks_stored: bool) -> int:
    tokens = cal.nsamples * cal.seqlen
    settings = {"model": shape.spec, "model_location": shape.location, "gguf_file": "x" * 24 if shape.gguf else None,
                "revision": None, "fingerprint": "0" * 16, "dtype": str(dtype).removeprefix("torch."), "data": cal.data,
                "data_description": f"{cal.data} ({'0' * 12} bytes)", "data_identity": f"file:{cal.data}",
                "nsamples": cal.nsamples, "seqlen": cal.seqlen, "seed": cal.seed, "gram": gram,
                "block_statistics": blocks_stored, "blocks": shape.blocks_name, "n_blocks": shape.n_blocks, "zprune_version": "0.1.0"}
    fields = {"model_fingerprint": "0" * 16, "dtype": settings["dtype"], "data": settings["data_identity"],
              "data_hash": "0" * 64, "nsamples": cal.nsamples, "seqlen": cal.seqlen, "seed": cal.seed, "gram": gram,
              "blocks": blocks_stored}
    key = "0" * 20
    if propagated:
        settings["propagated"] = {"recipe": "0" * 16, "weights": "0" * 16}
        fields, key = {"base": key, "run": {"recipe": "0" * 16, "weights": "0" * 16}}, key + "-p" + "0" * 12
    manifest = {"format": FORMAT_VERSION, "key": key, "key_fields": fields, "settings": settings, "created": "2026-01-01T00:00:00+0000",
                "blocks": [{"index": i, "file": f"block_{i:03d}.safetensors",
                            "groups": [{"members": list(g.members), "n_tokens": tokens, "n_sequences": cal.nsamples,
                                        "width": g.width} for g in groups]} for i, groups in enumerate(shape.groups)
                           if blocks_stored],
                "files": {name: {"size": size, "sha256": "0" * 64} for name, size in files.items()}}
    return len(json.dumps(manifest, indent=1, default=str))
