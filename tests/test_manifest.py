"""A statistics entry's manifest as a value: read from disk and written back, the same JSON."""

from __future__ import annotations

import json

import torch

from zprune_cli.stats.collect import InputGroup
from zprune_cli.stats.manifest import BlockRecord, GroupRecord, StatsManifest
from zprune_cli.stats.store import FORMAT_VERSION, MANIFEST, StatsKey, StatsStore

KEY = StatsKey("fp", "float32", "c4:train", "abc", 8, 256, 0, False)


def test_the_manifest_on_disk_is_the_value_written(tmp_path):
    store = StatsStore(tmp_path)
    group = InputGroup(members=["q", "k"], sumsq=torch.ones(4, dtype=torch.float64), gram=None, n_tokens=10, n_sequences=2)
    with store.writer(KEY, {"gram": False, "nsamples": 2}) as w:
        w.write_inputs(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 4))
        w.write_block(0, [group])
    entry = store.lookup(KEY)
    on_disk = json.loads((entry.path / MANIFEST).read_text())
    assert list(on_disk) == ["format", "key", "key_fields", "settings", "created", "blocks", "files"]
    assert on_disk["blocks"] == [{"index": 0, "file": "block_000.safetensors",
                                  "groups": [{"members": ["q", "k"], "n_tokens": 10, "n_sequences": 2, "width": 4}]}]
    m = entry.manifest
    assert isinstance(m, StatsManifest) and m.format == FORMAT_VERSION and m.key == KEY.digest == entry.key
    assert m.blocks == [BlockRecord(0, "block_000.safetensors", [GroupRecord(["q", "k"], 10, 2, 4)])]
    assert m.settings == {"gram": False, "nsamples": 2} and sorted(m.files) == ["block_000.safetensors", "inputs.safetensors"]
    assert m.to_json() == on_disk and json.dumps(m.to_json(), indent=1) == (entry.path / MANIFEST).read_text()
    assert StatsManifest.from_json(on_disk) == m
