"""Bytes held at once while a command runs, part by part, from a ModelShape.

Exact: the weights in the run dtype, block 0's inputs and their buffer, the statistics of one block, the
logits of one pass. Approximate (see docs/dry-run.md): one block's activations, the loader's transient
copies and a fixed runtime overhead, each a formula or a constant measured on the models we test.
"""

from __future__ import annotations

from dataclasses import dataclass

from zprune_cli.base.lazy import lazy
from zprune_cli.data.windows import windows_bytes
from zprune_cli.estimation.shape import ModelShape
from zprune_cli.models.runner import block_inputs_bytes
from zprune_cli.estimation.store_size import GRAM_BYTES, SUMSQ_BYTES, element_size
from zprune_cli.base.settings import Calibration

torch = lazy("torch")

MiB = 1 << 20
# Resident before the first tensor: Python with torch, transformers and zprune imported (247 MiB measured with
# torch 2.13 for the CPU; a CUDA build maps more).
IMPORTS_BYTES = 250 * MiB
# Then the model's code, its tokenizer and the text: 64-98 MiB measured for the tokenizer and config alone.
RUNTIME_BYTES = 100 * MiB
# Loading a GGUF file holds dequantised float32 tensors beside the model for a while: measured 0.64 x the
# float32 model on SmolLM2-135M (Q4_1); taken as a constant for other GGUF files.
GGUF_LOAD_FACTOR = 0.65
NLL_CHUNK_ELEMENTS = 1 << 26  # evaluation/perplexity.py: fp32 logits materialised at once for the NLL
FP32 = 4


@dataclass(frozen=True)
class Footprint:
    """The sizes one run is made of (bytes), for a model shape, run dtype and window length."""

    shape: ModelShape
    dtype: torch.dtype
    offload: str = "none"  # "disk": blocks read from the checkpoint one at a time; "cpu": copied from host memory

    @property
    def d(self) -> int:
        return element_size(self.dtype)

    @property
    def model(self) -> int:
        return self.shape.params * self.d

    @property
    def outside_params(self) -> int:
        """Parameters outside the decoder blocks: embeddings, final norm, LM head (tied ones once)."""
        return self.shape.params - self.shape.blocks_params

    @property
    def untied_head(self) -> int:
        """The LM head's parameters when it is a tensor of its own (outside the blocks are the embeddings, the
        final norm and, untied, the head: two vocab x hidden matrices)."""
        head = self.shape.vocab * self.shape.hidden
        return head if self.outside_params >= 2 * head else 0

    def weights(self, reading: bool = True) -> dict[str, int]:
        """The weights held while the blocks run: the whole model; with --offload disk the weights outside the
        blocks (read at load and kept: models/offload_load.py) and the one block that runs (the largest), with
        the file's copy of it while it is read and converted (`reading`: a step that reads blocks as it goes;
        the copy is freed once the block is built, before it is pruned or written)."""
        if self.offload == "cpu":  # the blocks stay in host memory, the one that runs is copied to the device
            return {"weights outside the blocks": self.outside_params * self.d,
                    "one decoder block": self.shape.largest_block_params * self.d,
                    "blocks in host memory": self.shape.blocks_params * self.d}
        if self.offload != "disk":
            return {"model": self.model}
        return {"weights outside the blocks": self.outside_params * self.d,
                "one decoder block": self.shape.largest_block_params * self.d,
                "block being read": self.converting(self.shape.largest_block_params) if reading else 0}

    def loading(self) -> dict[str, int]:
        """On the host, while the model is built: every weight, or with --offload disk those outside the blocks
        (with --offload cpu the device gets only those outside the blocks)."""
        if self.offload == "cpu":
            return {"weights outside the blocks": self.outside_params * self.d,
                    "blocks in host memory": self.shape.blocks_params * self.d,
                    "loader's transient copies": self.load_extra()}
        if self.offload != "disk":
            return {"model": self.model, "loader's transient copies": self.load_extra()}
        return {"weights outside the blocks": self.outside_params * self.d,
                "loader's transient copies": self.converting(self.outside_params)}

    def file_bytes(self, params: int) -> int:
        """`params` weights as the checkpoint stores them (in the run dtype when the published one is unknown)."""
        return params * (element_size(getattr(torch, self.shape.file_dtype)) if self.shape.file_dtype else self.d)

    @property
    def converted(self) -> bool:
        """The checkpoint's dtype differs from the run dtype (unknown counts as the same)."""
        return self.shape.file_dtype not in (None, str(self.dtype).removeprefix("torch."))

    def converting(self, params: int) -> int:
        """Transient host bytes while `params` weights are read from safetensors: the file's tensors beside the
        converted ones; none in the same dtype (the file is memory-mapped into the weights, as in load_extra)."""
        return self.file_bytes(params) if self.converted else 0

    def load_extra(self) -> int:
        """Transient bytes while loading, on the host: GGUF dequantisation, or the weight files read to
        convert them to another dtype (a same-dtype safetensors file is memory-mapped into the weights)."""
        if self.shape.gguf:
            return int(GGUF_LOAD_FACTOR * self.shape.params * FP32)
        if self.shape.file_dtype and self.shape.file_dtype != str(self.dtype).removeprefix("torch."):
            return self.shape.weight_file_bytes
        return 0

    def activations(self, tokens: int, batch: int = 1) -> int:
        """One block's live activations for `batch` windows of `tokens`: about four hidden-wide tensors
        (residual, norm, attention output, projections) and three of the widest input (MLP gate, up, product),
        plus attention scores: materialised in eager attention (scores, fp32 softmax, cast), one copy counted
        for SDPA (fused kernels hold less; the math fallback holds this)."""
        s = self.shape
        linear = batch * tokens * self.d * (4 * s.hidden + 3 * s.widest)
        per_score = 2 * self.d + FP32 if s.attention == "eager" else self.d
        return linear + batch * s.n_heads * tokens * tokens * per_score

    def hooks(self, tokens: int) -> int:
        """The statistics hook's float32 copy of one Linear input and its square."""
        return 2 * tokens * self.shape.widest * FP32

    def logits(self, tokens: int, batch: int = 1) -> int:
        return batch * tokens * self.shape.vocab * self.d

    def block_stats(self, gram: bool) -> int:
        """The largest block's accumulators (sumsq float64, Gram float32), one input group each."""
        return max(sum(g.width * SUMSQ_BYTES + (g.width * g.width * GRAM_BYTES if gram else 0) for g in block)
                   for block in self.shape.groups)

    def block_inputs(self, cal: Calibration) -> int:
        """Block 0's inputs of every window [nsamples, seqlen, hidden], in the run dtype."""
        return block_inputs_bytes(cal.nsamples, cal.seqlen, self.shape.hidden, self.dtype)

    def token_ids(self, cal: Calibration) -> int:
        return windows_bytes(cal.nsamples, cal.seqlen)

    # --- phases: the bytes held at the peak of each step, on the device ------------------------------
    def calibrating(self, cal: Calibration, gram: bool) -> dict[str, int]:
        """Embedding all windows (block 0 alone runs for the first: the others stand in, so no logits), then
        one block at a time: inputs + a same-size buffer, activations, hook copies, the statistics and
        safetensors' copy of them when written."""
        blocks = self.activations(cal.seqlen) + self.hooks(cal.seqlen) + 2 * self.block_stats(gram)
        weights = self.weights()
        if not (self.shape.gguf or self.converted):  # the weights map the file, and no logits: the head is never read
            part = "model" if "model" in weights else "weights outside the blocks"
            weights[part] -= self.untied_head * self.d  # (measured: 64 MiB less at vocab 32000 x hidden 512)
        return {**weights, "block inputs + buffer": 2 * self.block_inputs(cal),
                "token ids": self.token_ids(cal), "activations, statistics": blocks}

    def evaluating(self, tokens: int, batch: int) -> dict[str, int]:
        nll = 2 * min(tokens * self.shape.vocab, NLL_CHUNK_ELEMENTS) * FP32
        return {**self.weights(), "logits": self.logits(tokens, batch),
                "activations, statistics": self.activations(tokens, batch) + nll}

    def pruning(self, gram: bool, work: int) -> dict[str, int]:
        """One layer at a time: the block's statistics and what the method holds beside the largest layer
        (`work`: Method.work_bytes, from the method's own account of its temporaries)."""
        return {**self.weights(reading=False), "activations, statistics": self.block_stats(gram),
                "method's working memory": work}

    def reading_block(self, gram: bool) -> dict[str, int]:
        """--offload disk, as the next block to prune is read: the block, the file's copy being converted and
        its statistics (the previous block is written and dropped before)."""
        return {**self.weights(), "activations, statistics": self.block_stats(gram)}

    def saving(self, out_dtype: torch.dtype) -> dict[str, int]:
        """save_pretrained: a GGUF-loaded model is rebuilt from its config (a second copy), the state is cast
        to the output dtype (a copy unless the dtypes agree), and one tensor at a time is copied on writing
        (measured: about the largest tensor)."""
        out = element_size(out_dtype)
        if self.offload == "disk":  # the blocks are written already: the weights outside them, in the last shard
            cast = self.outside_params * out if out_dtype != self.dtype else 0
            return {"weights outside the blocks": self.outside_params * self.d, "last shard in output dtype": cast,
                    "tensor being written": self.shape.largest_tensor * out}
        if self.offload == "cpu":  # each tensor is cast where it lives: the blocks on the host
            outside, blocks = self.outside_params, self.shape.blocks_params
            return {"weights outside the blocks": outside * self.d, "blocks in host memory": blocks * self.d,
                    "outside weights in output dtype": outside * out if out_dtype != self.dtype else 0,
                    "blocks in output dtype": blocks * out if out_dtype != self.dtype else 0,
                    "tensor being written": self.shape.largest_tensor * out}
        cast = self.shape.params * out if out_dtype != self.dtype else 0
        return {"model": self.model, "rebuilt model": self.model if self.shape.gguf else 0,
                "state in output dtype": cast, "tensor being written": self.shape.largest_tensor * out}

    def writing_block(self, out_dtype: torch.dtype, gram: bool) -> dict[str, int]:
        """--offload disk, as each pruned block is handed to the save (models/stream_save.py): the block in the
        output dtype (a copy unless the dtypes agree) and about one tensor copied on writing, beside the weights
        and the block's statistics."""
        out = element_size(out_dtype)
        cast = self.shape.largest_block_params * out if out_dtype != self.dtype else 0
        return {**self.weights(reading=False), "activations, statistics": self.block_stats(gram), "block in output dtype": cast,
                "tensor being written": self.shape.largest_linear * out}

    def offload_host(self, out_dtype: torch.dtype | None) -> dict[str, dict[str, int]]:
        """--offload disk on an accelerator: what the host holds at each step. The weights outside the blocks are
        read and converted on the host, then moved; a block is read on the host and converted as it moves; a
        finished block comes back to the host in the output dtype to be written."""
        outside, block = self.outside_params, self.shape.largest_block_params
        steps = {"loading": {"loader's transient copies": self.file_bytes(outside) + self.converted * outside * self.d},
                 "reading a block": {"block being read": self.file_bytes(block)}}
        if out_dtype is not None:
            out = element_size(out_dtype)
            steps["writing a block"] = {"block in output dtype": block * out}
            steps["saving"] = {"last shard in output dtype": outside * out}
        return steps
