"""Shared fixtures: tiny random models saved as HF folders with an offline byte-level tokenizer."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Set before transformers / huggingface_hub are imported: they read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Never the user's cache, not even from module-scoped fixtures (each test also gets its own ZPRUNE_HOME).
os.environ["ZPRUNE_HOME"] = tempfile.mkdtemp(prefix="zprune-tests-home-")
# A relative ZPRUNE_DATA_DIR (a user's own) must survive tests that change directory: pin it now.
if os.environ.get("ZPRUNE_DATA_DIR"):
    os.environ["ZPRUNE_DATA_DIR"] = os.path.abspath(os.path.expanduser(os.environ["ZPRUNE_DATA_DIR"]))

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO / "tests" / "data"  # a small openly licensed slice, shipped (tests/data/SOURCES.md)


def _full_data() -> Path | None:
    """The full data folder (ZPRUNE_TEST_DATA, ZPRUNE_DATA_DIR, or ../shared/data beside the repo), if present."""
    for candidate in (os.environ.get("ZPRUNE_TEST_DATA"), os.environ.get("ZPRUNE_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "c4").is_dir() and (Path(candidate) / "wikitext2").is_dir():
            return Path(candidate).resolve()
    return None


SHARED_DATA = _full_data()  # None on a fresh clone with no data folder beside it
DATA_DIR = SHARED_DATA or FIXTURE_DATA  # what the real-model tests read: the full files, else the shipped slice
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def full_data() -> Path:
    """The full data folder; skipped (with its reason in the summary) where it is absent, failed in CI."""
    if SHARED_DATA is None:
        message = "needs the full data folder (../shared/data beside the repo, or ZPRUNE_TEST_DATA=DIR)"
        if IN_CI:
            pytest.fail(f"{message}; CI must run every data test, so a missing folder fails")
        pytest.skip(message)
    return SHARED_DATA


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: every byte is one token; BOS is added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=260, max_position_embeddings=512)


def tiny_config(family: str, **llama: object):
    """Configs of several families, small enough for a unit test (`llama`: other sizes for the Llama one)."""
    import transformers as tf

    assert not llama or family == "llama", "size overrides are for the llama config"
    if family == "llama":
        return tf.LlamaConfig(**{**TINY, **llama})
    if family == "mistral":
        return tf.MistralConfig(**TINY, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**TINY)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**TINY, head_dim=8, sliding_window=16, layer_types=["sliding_attention", "full_attention"])
    if family == "opt":
        return tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=260,
                            max_position_embeddings=512, word_embed_proj_dim=32)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=260, max_position_embeddings=512)
    return _more_families(tf, family)


def _more_families(tf, family: str):
    """The families tests/test_families.py adds: MoE, Conv1D, fused projections, tied embeddings, a text tower."""
    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)  # inside the 260-token vocabulary
    moe = dict(num_experts_per_tok=2, moe_intermediate_size=32)
    builders = {
        "mixtral": lambda: tf.MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(**TINY, **moe, num_experts=4, shared_expert_intermediate_size=32),
        "qwen3_moe": lambda: tf.Qwen3MoeConfig(**TINY, **moe, num_experts=4, head_dim=8),
        # experts stored transposed ([experts, in, out]) with biases, multiplied with `@`
        "gpt_oss": lambda: tf.GptOssConfig(**TINY, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                                           sliding_window=16, layer_types=["sliding_attention", "full_attention"]),
        "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=260, n_positions=512, **ids),
        "phi3": lambda: tf.Phi3Config(**TINY, **ids),
        "falcon": lambda: tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=260, **ids),
        "gemma2": lambda: tf.Gemma2Config(**TINY, head_dim=8),
        "qwen3": lambda: tf.Qwen3Config(**TINY, head_dim=8),
        "phi": lambda: tf.PhiConfig(**TINY),
        "stablelm": lambda: tf.StableLmConfig(**TINY),
        "cohere": lambda: tf.CohereConfig(**TINY, **ids),
        # Multimodal: the vision tower (3 wider blocks) outweighs the text tower; only the text blocks are pruned.
        "gemma3_vision": lambda: tf.Gemma3Config(
            text_config=dict(**TINY, head_dim=8, sliding_window=16, layer_types=["sliding_attention", "full_attention"]),
            vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                               image_size=32, patch_size=8),
            image_token_index=259, boi_token_index=257, eoi_token_index=258, mm_tokens_per_image=4),
    }
    if family not in builders:
        raise ValueError(family)
    return builders[family]()


FAMILIES = ["llama", "mistral", "qwen2", "gemma3", "opt", "gpt_neox"]
MORE_FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss", "gpt2", "phi3", "falcon", "gemma2", "qwen3", "phi", "stablelm",
                 "cohere", "gemma3_vision"]


def score_methods() -> list[str]:
    """The registered methods that only score (the base class masks and zeroes): read from the registry, so a
    new score method is tested with no edit here."""
    from zprune_cli.methods import METHODS, Method, method_names

    return [name for name in method_names() if METHODS[name].prune is Method.prune]


def tiny_model(family: str = "llama", seed: int = 0, **llama: object):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **llama), attn_implementation="eager")
    model.eval()
    return model


def save_tiny(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    model = tiny_model(family, seed)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def save_tiny_gguf(path: Path, hidden: int = 32, ffn: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A tiny llama GGUF file (float32 tensors) with a byte-level BPE tokenizer (the 256 byte tokens, <s>,
    </s> and one merge) in its header, as llama.cpp writes them: transformers reads it as it reads SmolLM2's."""
    import gguf
    import numpy as np
    from tokenizers import pre_tokenizers

    rng = np.random.default_rng(seed)
    tokens = ["<s>", "</s>", *sorted(pre_tokenizers.ByteLevel.alphabet()), "he"]
    heads, kv_heads = 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    for add, value in ((writer.add_block_count, layers), (writer.add_context_length, 512), (writer.add_embedding_length, hidden),
                       (writer.add_feed_forward_length, ffn), (writer.add_head_count, heads), (writer.add_head_count_kv, kv_heads),
                       (writer.add_rope_freq_base, 10000.0), (writer.add_layer_norm_rms_eps, 1e-5),
                       (writer.add_vocab_size, len(tokens)), (writer.add_rope_dimension_count, hidden // heads),
                       (writer.add_tokenizer_model, "gpt2"), (writer.add_tokenizer_pre, "default"), (writer.add_token_list, tokens),
                       (writer.add_token_types, [3, 3] + [1] * (len(tokens) - 2)), (writer.add_token_merges, ["h e"]),
                       (writer.add_bos_token_id, 0), (writer.add_eos_token_id, 1), (writer.add_pad_token_id, 1),
                       (writer.add_add_bos_token, True)):
        add(value)

    def weight(name: str, *shape: int) -> None:  # numpy [out, in]; the file stores the shape reversed
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    kv = kv_heads * hidden // heads
    weight("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
        for name, out, inp in (("attn_q", hidden, hidden), ("attn_k", kv, hidden), ("attn_v", kv, hidden),
                               ("attn_output", hidden, hidden), ("ffn_gate", ffn, hidden), ("ffn_up", ffn, hidden),
                               ("ffn_down", hidden, ffn)):
            weight(f"blk.{i}.{name}.weight", out, inp)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    weight("output.weight", len(tokens), hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return save_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    words = "the quick brown fox jumps over the lazy dog while pruning weights keeps accuracy high".split()
    gen = torch.Generator().manual_seed(0)
    picks = torch.randint(0, len(words), (3000,), generator=gen).tolist()
    path.write_text(" ".join(words[i] for i in picks))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ZPRUNE_HOME", str(folder))
    return folder


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ZPRUNE_NO_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.delenv("ZPRUNE_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("ZPRUNE_HOME", str(tmp_path / "zprune-home"))  # never the user's cache
    monkeypatch.chdir(tmp_path)  # no stray zprune.toml from the repo or cwd
