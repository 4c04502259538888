"""Public behaviour pinned literally: recipe and statistics digests, saved weights and stored results.

Digests key every stored statistic and result: a change to the canonical JSON (a renamed field, a new
default written out) would orphan every user's store with the rest of the suite green. So the values
here are literals, computed once; a change to one of them must be a deliberate decision (a format
version bump with a migration), never a side effect of a refactor. The saved weights of a tiny seeded
model are pinned the same way, by the exact positions of their zeros and the sum of their magnitudes."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
import torch
from safetensors.torch import load_file

from zprune_cli import Calibration, Evaluation, PruneRecipe, Settings, evaluate, prune

RECIPE_DIGESTS = {
    "wanda 0.5": (PruneRecipe("wanda", 0.5), "439637323bf8b150"),
    "ria owl": (PruneRecipe("ria", 0.5, allocation="owl"), "d05eaa05993964aa"),
    "zpruner row 0.6": (PruneRecipe("zpruner", 0.6, scope="row"), "dd4714ecc3a94fc7"),
    "wanda 2:4 swaps pcg": (PruneRecipe("wanda", pattern="2:4", reconstruct="pcg", refine="swaps"), "34f0370b9e7cfd5e"),
    "sparsegpt 0.7": (PruneRecipe("sparsegpt", 0.7), "d00f63eeafea2d6f"),
    "alps 4:8": (PruneRecipe("alps", pattern="4:8"), "911aae5e57f453e3"),
    "magnitude ignore": (PruneRecipe("magnitude", 0.5, ignore=["lm_head"]), "fb5efa87e15d5aab"),
}


@pytest.mark.parametrize("name", list(RECIPE_DIGESTS))
def test_recipe_digests_are_pinned(name):
    recipe, digest = RECIPE_DIGESTS[name]
    assert recipe.digest == digest


def test_statistics_key_digests_are_pinned():
    from zprune_cli.stats.store import PropagatedKey, StatsKey

    key = StatsKey("fp", "float32", "c4:train", "abc", 8, 256, 0, False)
    assert key.digest == "dfe072b8ca3f3fe9bc5c"
    assert PropagatedKey(key.digest, {"recipe": "r", "weights": "w"}).digest == "dfe072b8ca3f3fe9bc5c-p63cebfd4afae"


# method, pattern -> (recipe digest, sha256[:16] of the zero positions of every block projection, sum |W| to 6 digits)
SAVED = {
    ("magnitude", "unstructured"): ("2a29d8f6cfe5e3e6", "5fefefac2d4742cf", 233.104),
    ("wanda", "unstructured"): ("439637323bf8b150", "1be0dcce09c6c62c", 228.234),
    ("ria", "unstructured"): ("63685fc34a1217bf", "7f3ac7edea56d3da", 231.705),
    ("zpruner", "unstructured"): ("6052bc6982f057ae", "1969ad5ea16bbf6c", 231.817),
    ("sparsegpt", "unstructured"): ("cfe7678b848f7ae8", "f7cd30c605fb024b", 226.328),
    ("alps", "unstructured"): ("cfc6965bf65f3707", "097e5982a8ba7fb2", 241.236),
    ("wanda", "2:4"): ("6ea2604cebe90c0b", "bfeec22b7be1d866", 214.641),
    ("zpruner", "4:8"): ("656c4baa103d4236", "5d042b2fea66e2d9", 223.573),
}


def weights_fingerprint(folder) -> tuple[str, float]:
    tensors = load_file(str(next(folder.glob("*.safetensors"))))
    zeros, total = hashlib.sha256(), 0.0
    for name in sorted(tensors):
        if ".layers." in name and name.endswith("proj.weight"):
            weight = tensors[name].float()
            zeros.update(name.encode())
            zeros.update((weight == 0).numpy().tobytes())
            total += float(weight.abs().sum(dtype=torch.float64))
    return zeros.hexdigest()[:16], float(f"{total:.6g}")


@pytest.fixture(scope="module")
def pinned_world(tmp_path_factory):
    from conftest import save_tiny

    root = tmp_path_factory.mktemp("pinned")
    model = save_tiny(root / "tiny")
    text = root / "corpus.txt"
    words = "the quick brown fox jumps over the lazy dog while pruning weights keeps accuracy high".split()
    picks = torch.randint(0, len(words), (3000,), generator=torch.Generator().manual_seed(0)).tolist()
    text.write_text(" ".join(words[i] for i in picks))
    return root, model, text, Settings(cache_dir=root / "cache"), Calibration(str(text), 4, 32, 0)


@pytest.mark.parametrize("method, pattern", list(SAVED), ids=[f"{m}-{p}" for m, p in SAVED])
def test_saved_weights_are_pinned(pinned_world, method, pattern):
    root, model, _, settings, calibration = pinned_world
    recipe = PruneRecipe(method, 0.5, pattern=pattern)
    out = root / f"{method}-{pattern.replace(':', '-')}"
    prune(str(model), recipe, calibration=calibration, out=out, settings=settings)
    assert (recipe.digest, *weights_fingerprint(out)) == SAVED[(method, pattern)]


def test_stored_results_are_pinned(pinned_world):
    root, model, text, settings, calibration = pinned_world
    out = root / "results-wanda"
    prune(str(model), PruneRecipe("wanda", 0.5), calibration=calibration, out=out, settings=settings)
    for target in (out, model):
        evaluate(str(target), Evaluation(data=str(text), seqlen=32, max_windows=4), settings=settings)
    with sqlite3.connect(settings.cache_dir / "results.sqlite") as db:
        rows = db.execute("SELECT method, recipe, metric, value, protocol FROM runs ORDER BY method, metric").fetchall()
    protocol = json.dumps({"data_hash": "7023ff997ac3a5b8", "dataset": str(text), "n_tokens": 124, "n_windows": 4,
                           "seqlen": 32, "source": f"file:{text}", "split": "all"}, sort_keys=True, separators=(",", ":"))
    sparsity = '{"layers":"pruned decoder-block Linear"}'
    assert [(m, r, name, round(v, 4), p) for m, r, name, v, p in rows] == [
        ("dense", None, "ppl:corpus.txt", 262.9151, protocol),
        ("dense", None, "sparsity", 0.0, sparsity),
        ("wanda", "439637323bf8b150", "ppl:corpus.txt", 262.6216, protocol),
        ("wanda", "439637323bf8b150", "sparsity", 0.5, sparsity),
    ]
