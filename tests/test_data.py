"""Text sources and windows: the reference code's sampling, local copies, bad files."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import byte_tokenizer
from zprune_cli.data.sources import Text, resolve_source, wikitext_rows_to_text
from zprune_cli.data.windows import calibration_windows
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError


def reference_c4_windows(docs, tok, nsamples, seqlen, seed):
    """Written out as the Wanda / SparseGPT get_c4 loader does it."""
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(docs) - 1)
            enc = tok(docs[i])["input_ids"]
            if len(enc) > seqlen:
                break
        j = random.randint(0, len(enc) - seqlen - 1)
        out.append(enc[j : j + seqlen])
    return torch.tensor(out)


def test_document_windows_match_reference():
    tok = byte_tokenizer()
    docs = ["short", "a much longer document " * 5, "tiny", "another long enough text here " * 4]
    got = calibration_windows(Text(documents=docs), tok, nsamples=6, seqlen=40, seed=7)
    assert torch.equal(got, reference_c4_windows(docs, tok, 6, 40, 7))


def test_stream_windows_match_reference():
    tok = byte_tokenizer()
    text = "wiki text stream " * 50
    got = calibration_windows(Text(stream=text), tok, nsamples=5, seqlen=30, seed=0)
    random.seed(0)
    enc = tok(text)["input_ids"]
    want = []
    for _ in range(5):
        i = random.randint(0, len(enc) - 30 - 1)
        want.append(enc[i : i + 30])
    assert torch.equal(got, torch.tensor(want))


def test_too_short_data():
    with pytest.raises(ZpruneError, match="too short"):
        calibration_windows(Text(stream="tiny"), byte_tokenizer(), 2, 64, 0)
    with pytest.raises(ZpruneError, match="no document is longer"):
        calibration_windows(Text(documents=["tiny", "also"]), byte_tokenizer(), 2, 64, 0)


def test_local_wikitext_equals_hub_rows(full_data):
    source = resolve_source("wikitext2", "test", full_data)
    assert source.where.endswith("wikitext2")
    text = source.load().stream
    raw = (full_data / "wikitext2" / "wiki.test.raw").read_text()
    lines = raw.split("\n")[:-1]
    hf_rows = ["" if line == " " else line + "\n" for line in lines]
    # SOURCES.md: HF wikitext-2-raw-v1 test num_bytes = sum(len(row)) + 4 * rows
    assert sum(len(r.encode()) for r in hf_rows) + 4 * len(hf_rows) == 1_305_088
    assert text == "\n\n".join(hf_rows)


def test_local_c4_records(full_data):
    source = resolve_source("c4", "train", full_data)
    docs = source.load().documents
    assert len(docs) == 800 and source.identity == "c4:train"
    with pytest.raises(ZpruneError, match="local copy"):
        resolve_source("c4", "validation", full_data).load()  # not in the data dir: hub, offline


def test_bad_files(tmp_path):
    binary = tmp_path / "x.txt"
    binary.write_bytes(b"\x00\x01\x02" * 10)
    with pytest.raises(ZpruneUsageError, match="not text"):
        resolve_source(str(binary)).load()
    no_field = tmp_path / "x.jsonl"
    no_field.write_text('{"content": "hello"}\n')
    with pytest.raises(ZpruneUsageError, match="no 'text' field"):
        resolve_source(str(no_field)).load()
    not_json = tmp_path / "y.jsonl"
    not_json.write_text("hello\n")
    with pytest.raises(ZpruneUsageError, match="not JSON"):
        resolve_source(str(not_json)).load()
    with pytest.raises(ZpruneUsageError, match="^no such file: .*missing.txt$"):
        resolve_source(str(tmp_path / "missing.txt"))
    weird = tmp_path / "x.docx"
    weird.write_text("x")
    with pytest.raises(ZpruneUsageError, match="unknown type"):
        resolve_source(str(weird))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["one doc", "two doc"]}), path)
    assert resolve_source(str(path)).load().documents == ["one doc", "two doc"]


def test_wikitext_rows():
    assert wikitext_rows_to_text(" = A = \n \n b\n") == " = A = \n" + "\n\n" + "" + "\n\n" + " b\n"


@pytest.mark.parametrize("spec, message", [
    ("nosuchfile.txt", "no such file: nosuchfile.txt"),
    ("Notes.JSONL", "no such file: Notes.JSONL"),
    ("corpus.parquet", "no such file: corpus.parquet"),
    ("data/c4", "no such file: data/c4"),
    ("./c4", "no such file: ./c4"),
    ("~/nothing-here", "no such file: ~/nothing-here"),
    ("wikitext", "unknown data 'wikitext': use one of wikitext2, c4, ptb"),
    ("notes.csv", "unknown data 'notes.csv'"),
])
def test_a_missing_path_is_no_such_file_and_a_bare_name_lists_the_known(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZpruneUsageError) as caught:
        resolve_source(spec)
    assert str(caught.value).startswith(message), str(caught.value)
