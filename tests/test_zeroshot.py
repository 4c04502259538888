"""Zero-shot through lm-eval on an in-memory model, fully offline: a task written here, the shipped tasks."""

from __future__ import annotations

import inspect
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import DATA_DIR, tiny_model
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.evaluation.zeroshot import (
    DATA_DIR_ENV,
    SHIPPED_TASKS_DIR,
    required_data_files,
    shipped_tasks,
    zeroshot,
)

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"




def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (byte-level BPE without merges), ids 0..255, and <eos> = 256. No download."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_model("llama", hidden_size=64, intermediate_size=128, max_position_embeddings=4096)


DOCS = [
    {"question": "What color is the sky?", "choices": ["blue", "green", "a loud trumpet"], "gold": 0},
    {"question": "How many legs has a cat?", "choices": ["two", "four", "nine hundred"], "gold": 1},
    {"question": "Which is a fruit?", "choices": ["carrot", "rock", "apple"], "gold": 2},
    {"question": "What do bees make?", "choices": ["honey", "steel", "clouds of dust"], "gold": 0},
    {"question": "Where do fish live?", "choices": ["in trees", "in water", "on the moon"], "gold": 1},
    {"question": "What melts in the sun?", "choices": ["ice", "granite", "a diamond ring"], "gold": 0},
    {"question": "What barks?", "choices": ["a cat", "a tree", "a dog"], "gold": 2},
    {"question": "What is hot?", "choices": ["fire", "snow", "the arctic sea"], "gold": 0},
]


def write_task(folder: Path) -> None:
    data = folder / "qa.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    config = {
        "task": "tiny_qa",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "gold",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    (folder / "tiny_qa.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def direct_accuracy(model, tokenizer) -> tuple[float, float]:
    """acc and acc_norm computed by hand: sum log p(" " + choice | prompt), argmax (norm: per character)."""
    hits = hits_norm = 0
    for doc in DOCS:
        context = f"Question: {doc['question']}\nAnswer:"
        n_ctx = len(tokenizer(context).input_ids)
        scores = []
        for choice in doc["choices"]:
            ids = torch.tensor(tokenizer(context + " " + choice).input_ids)
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)
            scores.append(sum(logp[t - 1, ids[t]].item() for t in range(n_ctx, len(ids))))
        best = max(range(len(scores)), key=scores.__getitem__)
        best_norm = max(range(len(scores)), key=lambda i: scores[i] / len(doc["choices"][i]))
        hits += best == doc["gold"]
        hits_norm += best_norm == doc["gold"]
    return hits / len(DOCS), hits_norm / len(DOCS)


def test_local_task_runs_offline_and_matches_a_direct_computation(model, tokenizer, tmp_path):
    write_task(tmp_path)
    result = zeroshot(model, tokenizer, ["tiny_qa"], tasks_dir=tmp_path, batch_size=2)
    assert set(result) == {"tiny_qa"}
    row = result["tiny_qa"]
    assert row["n"] == len(DOCS)
    assert 0.0 <= row["acc"] <= 1.0
    acc, acc_norm = direct_accuracy(model, tokenizer)
    assert row["acc"] == pytest.approx(acc)
    assert row["acc_norm"] == pytest.approx(acc_norm)
    # lm-eval's standard error of a mean: the sample standard deviation (n - 1) over sqrt(n)
    n = len(DOCS)
    assert row["acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) / (n - 1)))
    assert row["acc_norm_stderr"] == pytest.approx(math.sqrt(acc_norm * (1 - acc_norm) / (n - 1)))


def test_unknown_task_names_close_matches(tmp_path):
    with pytest.raises(ZpruneUsageError) as err:
        zeroshot(None, None, ["arc_easy_locl"])
    message = str(err.value)
    assert "unknown task 'arc_easy_locl'" in message
    assert "arc_easy_local" in message and "arc_easy" in message


def test_shipped_tasks_need_a_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(ZpruneUsageError, match=DATA_DIR_ENV):
        zeroshot(None, None, ["piqa_local"])
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "valid.jsonl").write_text("{}\n")
    with pytest.raises(ZpruneError, match=r"missing data file.*piqa/valid-labels\.lst.*ZPRUNE_DATA_DIR"):
        zeroshot(None, None, ["piqa_local"], data_dir=tmp_path)


# ------------------------------------------------------------------------------------ shipped task configs
LM_EVAL_TWIN = {
    "arc_easy_local": "arc/arc_easy.yaml",
    "arc_challenge_local": "arc/arc_easy.yaml",  # lm-eval's arc_challenge includes arc_easy.yaml
    "piqa_local": "piqa/piqa.yaml",
    "winogrande_local": "winogrande/default.yaml",
    "boolq_local": "super_glue/boolq/default.yaml",
    "rte_local": "glue/rte/default.yaml",
    "wnli_local": "glue/wnli/default.yaml",
    "hellaswag_local": "hellaswag/hellaswag.yaml",
}


class _TagLoader(yaml.SafeLoader):
    pass


_TagLoader.add_constructor("!function", lambda loader, node: "!function " + loader.construct_scalar(node))


def _yaml(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_TagLoader)


def _function_body(func) -> str:
    lines = inspect.getsource(func).splitlines()
    return "\n".join(line for line in lines[1:] if line.strip() and not line.strip().startswith("#"))


def test_shipped_tasks_copy_lm_evals_prompts():
    assert shipped_tasks() == sorted(LM_EVAL_TWIN)
    sys.path.insert(0, str(SHIPPED_TASKS_DIR))
    try:
        import utils as ours  # zprune_cli/tasks/utils.py
    finally:
        sys.path.pop(0)
    for name, twin in LM_EVAL_TWIN.items():
        mine, theirs = _yaml(SHIPPED_TASKS_DIR / f"{name}.yaml"), _yaml(LM_EVAL_TASKS / twin)
        assert mine["task"] == name
        assert mine["output_type"] == theirs["output_type"] == "multiple_choice"
        assert [m["metric"] for m in mine["metric_list"]] == [m["metric"] for m in theirs["metric_list"]], name
        for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
            if str(theirs[key]).startswith("!function"):
                module, func = theirs[key].split()[1].split(".")
                sys.path.insert(0, str((LM_EVAL_TASKS / twin).parent))
                try:
                    their_func = getattr(__import__(module), func)
                finally:
                    sys.path.pop(0)
                    sys.modules.pop(module, None)
                my_func = getattr(ours, mine[key].split()[1].split(".")[1])
                assert _function_body(my_func) == _function_body(their_func), (name, key)
            else:
                assert mine[key] == theirs[key], (name, key)


# expected record counts from shared/data/SOURCES.md, and the first item's gold index
SHIPPED_COUNTS = {
    "arc_easy_local": ("test", 2376),
    "arc_challenge_local": ("test", 1172),
    "piqa_local": ("validation", 1838),
    "winogrande_local": ("validation", 1267),
    "boolq_local": ("validation", 3270),
    "rte_local": ("validation", 277),
    "wnli_local": ("validation", 71),
    "hellaswag_local": ("validation", 10042),
}


def test_shipped_loaders_read_the_shared_data(full_data):
    DATA_DIR = full_data
    sys.path.insert(0, str(SHIPPED_TASKS_DIR))
    try:
        import utils as ours
    finally:
        sys.path.pop(0)
    for name, (split, count) in SHIPPED_COUNTS.items():
        config = _yaml(SHIPPED_TASKS_DIR / f"{name}.yaml")
        kwargs = {k: v.replace("__ZPRUNE_DATA_DIR__", str(DATA_DIR)) for k, v in config["dataset_kwargs"].items()}
        assert all(f.is_file() for f in required_data_files(name, DATA_DIR)), name
        loader = getattr(ours, config["custom_dataset"].split(".")[-1])
        assert len(loader(**kwargs, version=1.0)[split]) == count, name
    # hand-checked first items (SOURCES.md; the original files)
    hella = ours.load_hellaswag(str(DATA_DIR / "hellaswag/hellaswag_val_full.txt.bz2"))["validation"][0]
    assert hella["query"] == "Roof shingle removal: A man is sitting on a roof. He"  # lm-eval capitalises ctx_b
    assert hella["label"] == 3 and hella["choices"][3] == "starts pulling up roofing on a roof."
    boolq = ours.load_boolq(str(DATA_DIR / "boolq/val.jsonl"))["validation"][0]
    assert boolq["label"] == 0 and boolq["passage"].startswith("Ethanol fuel -- ")
    rte = ours.load_rte(str(DATA_DIR / "rte/val.jsonl"))["validation"]
    assert (rte[0]["label"], rte[1]["label"]) == (1, 0)  # not_entailment, entailment
    wnli = ours.load_wnli(str(DATA_DIR / "wnli/dev.tsv"))["validation"]
    assert wnli[0]["sentence1"] == "The drain is clogged with hair. It has to be cleaned." and wnli[1]["label"] == 1
    piqa = ours.load_piqa(str(DATA_DIR / "piqa/valid.jsonl"), str(DATA_DIR / "piqa/valid-labels.lst"))
    assert [piqa["validation"][i]["label"] for i in range(3)] == [0, 1, 1]


def test_shipped_arc_easy_runs_on_the_tiny_model(model, tokenizer):  # the shipped slice is enough
    result = zeroshot(model, tokenizer, ["arc_easy_local"], limit=5, data_dir=DATA_DIR)
    row = result["arc_easy_local"]
    assert row["n"] == 5
    assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["acc_norm"] <= 1.0


# first document of each shipped task as lm-eval renders it: (prompt ending, number of choices, target)
FIRST_DOCS = {
    "arc_easy_local": ("foundation of most food webs?\nAnswer:", 4, 0),
    "arc_challenge_local": ("effect of this increase in rotation?\nAnswer:", 4, 2),
    "boolq_local": ("\nQuestion: does ethanol take more energy make that produces?\nAnswer:", 2, 0),
    "hellaswag_local": ("Roof shingle removal: A man is sitting on a roof. He", 4, 3),
    "piqa_local": ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:", 2, 0),
    "rte_local": ("\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:", 2, 1),
    "wnli_local": ("\nQuestion: The hair has to be cleaned. True or False?\nAnswer:", 2, 0),
    # winogrande scores the sentence's end after each option; doc_to_text is the gold option's index
    "winogrande_local": (1, 2, "always got the easier cases."),
}


def test_shipped_tasks_render_like_lm_eval(tmp_path, full_data):
    DATA_DIR = full_data
    from lm_eval.tasks import TaskManager

    from zprune_cli.evaluation.zeroshot import _hf_offline, _write_resolved_tasks

    _write_resolved_tasks(tmp_path, DATA_DIR, shipped_tasks())
    with _hf_offline():
        loaded = TaskManager(include_path=str(tmp_path), include_defaults=False).load(shipped_tasks())
    for name, (text, n_choices, target) in FIRST_DOCS.items():
        task = loaded["tasks"][name]
        doc = next(iter(task.eval_docs))
        rendered = task.doc_to_text(doc)
        assert rendered == text if isinstance(text, int) else rendered.endswith(text), name
        assert len(task.doc_to_choice(doc)) == n_choices, name
        assert task.doc_to_target(doc) == target, name
