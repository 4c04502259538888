"""`Protocol`: each kind serialises to the dict that keyed stored rows before it was a type (canonical JSON
pinned literally), reads back to an equal value, and is built by one function for measuring and resuming."""

from __future__ import annotations

import json

import pytest

from zprune_cli.data.sources import resolve_source
from zprune_cli.evaluation.run import Evaluation, perplexity_protocol, zeroshot_protocol
from zprune_cli.records.protocol import SPARSITY, OpenProtocol, PerplexityProtocol, Protocol, SparsityProtocol, ZeroShotProtocol
from zprune_cli.records.results import ResultRow, ResultsStore, canonical_json

# The dicts evaluation/run.py built by hand before the types, and their canonical JSON as the store holds it
OLD = {
    "perplexity": ({"dataset": "wikitext2", "split": "test", "seqlen": 32, "n_windows": 4, "n_tokens": 124,
                    "source": "wikitext2:test", "data_hash": "ab12"},
                   '{"data_hash":"ab12","dataset":"wikitext2","n_tokens":124,"n_windows":4,"seqlen":32,'
                   '"source":"wikitext2:test","split":"test"}'),
    "zeroshot": ({"task": "piqa_local", "num_fewshot": 0, "limit": None},
                 '{"limit":null,"num_fewshot":0,"task":"piqa_local"}'),
    "sparsity": ({"layers": "pruned decoder-block Linear"}, '{"layers":"pruned decoder-block Linear"}'),
    "speed": ({"seqlen": 64, "batch_size": 1, "device": "cpu"}, '{"batch_size":1,"device":"cpu","seqlen":64}'),
    "none": ({}, "{}"),
}
KIND = {"perplexity": PerplexityProtocol, "zeroshot": ZeroShotProtocol, "sparsity": SparsityProtocol,
        "speed": OpenProtocol, "none": OpenProtocol}


@pytest.mark.parametrize("kind", sorted(OLD))
def test_round_trip_keeps_the_stored_json(kind):
    old, stored = OLD[kind]
    protocol = Protocol.from_dict(old)
    assert type(protocol) is KIND[kind]
    assert protocol.to_json() == stored == canonical_json(old) == canonical_json(protocol)
    assert protocol.as_dict() == old and list(protocol.as_dict()) == list(old)  # key order of --json kept too
    assert Protocol.from_dict(json.loads(stored)) == protocol


def test_the_sparsity_protocol_is_the_old_constant():
    assert SPARSITY.as_dict() == {"layers": "pruned decoder-block Linear"}
    assert Protocol.from_dict({"layers": "pruned decoder-block Linear"}) == SPARSITY


def test_one_builder_per_kind_measures_and_resumes(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("one two three\n" * 10)
    source = resolve_source(str(text), "all", None)
    assert source.name == "file"
    assert perplexity_protocol(source, 32, 4).as_dict() == {
        "dataset": source.where, "split": source.split, "seqlen": 32, "n_windows": 4, "n_tokens": 4 * 31,
        "source": source.identity, "data_hash": source.content_hash}
    evaluation = Evaluation(data=(), tasks=("piqa_local",), num_fewshot=2, limit=50)
    assert zeroshot_protocol("piqa_local", evaluation).as_dict() == {"task": "piqa_local", "num_fewshot": 2, "limit": 50}


def test_a_row_keyed_by_a_protocol_is_found_by_its_old_dict(tmp_path):
    old, _ = OLD["perplexity"]
    with ResultsStore(tmp_path / "results.sqlite") as store:
        run_id = store.record(ResultRow(metric="ppl:wikitext2", value=20.0, fingerprint="f", protocol=Protocol.from_dict(old)))
        assert store.find(metric="ppl:wikitext2", fingerprint="f", protocol=old).run_id == run_id
        assert store.find(metric="ppl:wikitext2", fingerprint="f", protocol=Protocol.from_dict(old)).run_id == run_id
        assert store.query()[0].protocol == old
