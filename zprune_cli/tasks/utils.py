"""Loaders and prompt helpers for zprune's offline lm-eval tasks (the `*_local` YAMLs next to this file).

Each loader reads one zero-shot set in the layout of the shared data directory and returns a
`datasets.DatasetDict` whose records have the same fields as the Hugging Face dataset that lm-eval's own task
reads, so the YAMLs can copy lm-eval's doc_to_text / doc_to_choice / doc_to_target unchanged. lm-eval calls a
loader as custom_dataset(**metadata, **dataset_kwargs); the file paths come from dataset_kwargs, where
zprune substitutes the data directory for a placeholder before lm-eval sees the YAML.
"""

from __future__ import annotations

import bz2
import csv
import json
import re
from pathlib import Path

import datasets


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _split(name: str, records: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_list(records)})


# ----------------------------------------------------------------------------------------------- ARC
def _arc_records(path: str) -> list[dict]:
    # original ARC jsonl: {"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}
    # -> allenai/ai2_arc rows: {"id", "question", "choices": {"text": [...], "label": [...]}, "answerKey"}
    out = []
    for rec in _read_jsonl(path):
        choices = rec["question"]["choices"]
        out.append(
            {
                "id": rec["id"],
                "question": rec["question"]["stem"],
                "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
                "answerKey": rec["answerKey"],
            }
        )
    return out


def load_arc(test_file: str, validation_file: str | None = None, **_: object) -> datasets.DatasetDict:
    """ARC test split (scored) and, when given, the dev split (used for few-shot examples)."""
    splits = {"test": datasets.Dataset.from_list(_arc_records(test_file))}
    if validation_file is not None:
        splits["validation"] = datasets.Dataset.from_list(_arc_records(validation_file))
    return datasets.DatasetDict(splits)


# ---------------------------------------------------------------------------------------------- PIQA
def load_piqa(data_file: str, labels_file: str, **_: object) -> datasets.DatasetDict:
    """PIQA valid.jsonl + valid-labels.lst -> {"goal", "sol1", "sol2", "label": 0|1}."""
    records = _read_jsonl(data_file)
    labels = _read_labels(labels_file)
    if len(labels) != len(records):
        raise ValueError(f"{labels_file} has {len(labels)} labels for {len(records)} records in {data_file}")
    rows = [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(y)} for r, y in zip(records, labels)]
    return _split("validation", rows)


# ---------------------------------------------------------------------------------------- WinoGrande
def load_winogrande(data_file: str, optional_labels_file: str | None = None, **_: object) -> datasets.DatasetDict:
    """WinoGrande dev.jsonl -> {"sentence", "option1", "option2", "answer": "1"|"2"}.

    The `answer` field is used when the records carry it; otherwise the labels come from dev-labels.lst
    (optional_labels_file).
    """
    records = _read_jsonl(data_file)
    if not all(str(r.get("answer", "")).strip() for r in records):
        if optional_labels_file is None or not Path(optional_labels_file).is_file():
            raise ValueError(f"{data_file} has no `answer` field and no labels file was found ({optional_labels_file})")
        labels = _read_labels(optional_labels_file)
        if len(labels) != len(records):
            raise ValueError(
                f"{optional_labels_file} has {len(labels)} labels for {len(records)} records in {data_file}"
            )
        records = [dict(r, answer=y) for r, y in zip(records, labels)]
    rows = [
        {
            "sentence": r["sentence"],
            "option1": r["option1"],
            "option2": r["option2"],
            "answer": str(r["answer"]).strip(),
        }
        for r in records
    ]
    return _split("validation", rows)


# Prompt functions copied from lm-eval's winogrande/preprocess_winogrande.py ("partial evaluation": the
# choices are the two contexts, the target is the rest of the sentence, doc_to_text gives the gold index).
def winogrande_doc_to_text(doc: dict) -> int:
    answer_to_num = {"1": 0, "2": 1}
    return answer_to_num[doc["answer"]]


def winogrande_doc_to_target(doc: dict) -> str:
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc: dict) -> list[str]:
    idx = doc["sentence"].index("_")
    options = [doc["option1"], doc["option2"]]
    return [doc["sentence"][:idx] + opt for opt in options]


# --------------------------------------------------------------------------------------------- BoolQ
def load_boolq(data_file: str, **_: object) -> datasets.DatasetDict:
    """SuperGLUE BoolQ val.jsonl -> {"question", "passage", "idx", "label": 0 (false) | 1 (true)}."""
    rows = []
    for r in _read_jsonl(data_file):
        label = r["label"]
        if isinstance(label, str):
            label = {"false": 0, "true": 1}[label.strip().lower()]
        rows.append({"question": r["question"], "passage": r["passage"], "idx": int(r["idx"]), "label": int(label)})
    return _split("validation", rows)


# ----------------------------------------------------------------------------------------------- RTE
def load_rte(data_file: str, **_: object) -> datasets.DatasetDict:
    """SuperGLUE RTE val.jsonl -> GLUE rows {"sentence1", "sentence2", "idx", "label": 0 entailment | 1 not}."""
    rows = []
    for r in _read_jsonl(data_file):
        label = r["label"]
        if isinstance(label, str):
            label = {"entailment": 0, "not_entailment": 1}[label.strip()]
        rows.append(
            {"sentence1": r["premise"], "sentence2": r["hypothesis"], "idx": int(r["idx"]), "label": int(label)}
        )
    return _split("validation", rows)


# ---------------------------------------------------------------------------------------------- WNLI
def load_wnli(data_file: str, **_: object) -> datasets.DatasetDict:
    """GLUE WNLI dev.tsv (index, sentence1, sentence2, label) -> {"sentence1", "sentence2", "idx", "label"}.

    GLUE's label 1 means the second sentence follows from the first (lm-eval's choices are ["False", "True"]).
    """
    rows = []
    with open(data_file, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for r in reader:
            rows.append(
                {
                    "sentence1": r["sentence1"],
                    "sentence2": r["sentence2"],
                    "idx": int(r["index"]),
                    "label": int(r["label"]),
                }
            )
    return _split("validation", rows)


# ----------------------------------------------------------------------------------------- HellaSwag
def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag/utils.py `preprocess`."""
    text = text.strip()
    # NOTE: Brackets are artifacts of the WikiHow dataset portion of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


# the context's last sentence starts after the "activity_label: " separator or after a sentence end
_LAST_SENTENCE = re.compile(r"(?:^.*?: |^.*[.!?] )(?P<tail>[^.!?]*)$", re.DOTALL)


def _capitalize_ctx_b(query: str) -> str:
    """Recover lm-eval's `ctx_b.capitalize()` on the derived line "activity_label: ctx_a ctx_b".

    The derived file keeps ctx_b as it was (lower case). In HellaSwag ctx_b is the start of the context's last
    sentence, so when that last sentence starts with a lower-case letter it is ctx_b and gets capitalised,
    as lm-eval does; a last sentence that already starts upper case is left alone.
    """
    m = _LAST_SENTENCE.match(query)
    if m is None:
        return query
    tail = m.group("tail")
    if not tail or not tail[0].islower():
        return query
    return query[: m.start("tail")] + tail.capitalize()


def load_hellaswag(data_file: str, **_: object) -> datasets.DatasetDict:
    """Derived bz2 text, 6 lines per item (context, gold label, 4 endings) -> {"query", "choices", "label"}.

    The fields are those lm-eval's process_docs produces from the Hugging Face rows.
    """
    with bz2.open(data_file, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"{data_file}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
    rows = []
    for i in range(0, len(lines), 6):
        ctx, label, endings = lines[i], lines[i + 1], lines[i + 2 : i + 6]
        rows.append(
            {
                "query": hellaswag_preprocess(_capitalize_ctx_b(ctx)),
                "choices": [hellaswag_preprocess(e) for e in endings],
                "label": int(label),
            }
        )
    return _split("validation", rows)
