"""A model's shapes from its config alone: the model is built on the meta device (no memory, no weights)
and one forward pass on meta tensors finds what calibration would find on real ones.

The forward uses the real `BlockStatsCollector`, so the input groups (Linears that read one tensor:
q/k/v, gate/up) are exactly the ones calibration stores, found the same way (by tensor identity), never
by layer names. Eager attention with an explicit all-ones mask is used there only because transformers'
SDPA mask helpers read tensor values, which meta tensors do not have; grouping does not depend on it.
"""

from __future__ import annotations

import copy
import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from zprune_cli.base.lazy import inference_mode, lazy
from zprune_cli.models.blocks import find_blocks, find_linears, weight_view
from zprune_cli.models.load import source_dtype
from zprune_cli.models.resolve import WEIGHT_SUFFIXES, ModelSource
from zprune_cli.stats.collect import BlockStatsCollector

torch = lazy("torch")

log = logging.getLogger("zprune")

_TRACE_TOKENS = 8  # any length works on meta tensors; shapes scale with the real seqlen later
# A tokenizer rebuilt from a GGUF file (tokenizer.json with vocab and merges): about 45 bytes per token for
# SmolLM2-135M's 49152-token BPE; an approximation for other GGUF vocabularies.
GGUF_TOKENIZER_BYTES_PER_TOKEN = 45


@dataclass(frozen=True)
class Group:
    members: tuple[str, ...]  # Linear names inside the block; the first is the leader (the stored name)
    width: int  # in_features: the length of sumsq, the side of the Gram matrix


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need to know about a model, read without its weights."""

    spec: str
    location: str  # the resolved folder or hub id (recorded in the store's manifest)
    params: int  # unique parameters (tied embeddings once)
    block_linear_params: int  # weights of every nn.Linear inside the decoder blocks
    blocks_params: int  # every parameter inside the decoder blocks (the rest stays loaded under --offload disk)
    largest_block_params: int  # the parameters of the largest decoder block (the one --offload disk holds at a time)
    n_tensors: int  # parameter tensors (unique), each one entry in a saved file's header
    largest_tensor: int  # elements of the largest parameter (often the embeddings)
    largest_linear: int  # elements of the largest Linear weight inside the blocks
    n_blocks: int
    blocks_name: str
    hidden: int  # the width of a block's input
    vocab: int  # the width of the logits
    n_heads: int
    attention: str  # "eager" or "sdpa": what loading the model will use
    groups: tuple[tuple[Group, ...], ...]  # per block: its input groups
    gguf: bool  # weights dequantised from GGUF on load
    file_dtype: str | None  # the precision the model was published in (bfloat16 for GGUF; None: unknown)
    weight_file_bytes: int  # what the weight files hold on disk (0 for a hub id not downloaded)
    tokenizer_bytes: int  # what `save_pretrained` of the tokenizer writes, approximately
    traced: bool  # False: groups by the conservative rule (a forward on meta tensors failed)
    layer_shapes: tuple[tuple[int, int], ...] = ()  # [out, in] of every pruned projection, block after block
    attention_width: int = 0  # heads x head width: what attention's two products run over (0: hidden)

    @property
    def widest(self) -> int:
        return max((g.width for block in self.groups for g in block), default=self.hidden)


def model_shape(config, source: ModelSource) -> ModelShape:
    """Build the model of `config` on the meta device and read its shapes."""
    from transformers import AutoModelForCausalLM

    published = source_dtype(source)
    chosen = getattr(config, "_attn_implementation", None)  # read before building: from_config sets it
    with torch.device("meta"):  # a copy: the handle's config must stay as loading will see it
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager",
                                                 trust_remote_code=source.trust_remote_code)
    model.eval()
    blocks_name, blocks = find_blocks(model)
    text = getattr(config, "get_text_config", lambda: config)()
    traced = _trace(model, blocks)
    if traced is None:
        log.warning("could not trace %s on the meta device; the estimate counts every Linear as its own input group "
                    "(an upper bound on the statistics)", source.spec)
        hidden, vocab = int(text.hidden_size), int(text.vocab_size)
        groups = tuple(tuple(Group((n,), lin.in_features) for n, lin in find_linears(b).items()) for b in blocks)
    else:
        hidden, vocab, groups = traced
    linears = [lin for b in blocks for lin in find_linears(b).values()]
    per_block = [sum(p.numel() for p in b.parameters()) for b in blocks]
    return ModelShape(
        spec=source.spec, location=source.location, params=sum(p.numel() for p in model.parameters()),
        block_linear_params=sum(lin.weight.numel() for lin in linears), blocks_params=sum(per_block),
        largest_block_params=max(per_block, default=0), n_tensors=len(list(model.parameters())),
        largest_tensor=max(p.numel() for p in model.parameters()),
        largest_linear=max((lin.weight.numel() for lin in linears), default=0),
        n_blocks=len(blocks), blocks_name=blocks_name,
        hidden=hidden, vocab=vocab, n_heads=_heads(text, hidden), attention=_attention(chosen, type(model)),
        groups=groups, gguf=source.gguf_file is not None,
        file_dtype=str(published).removeprefix("torch.") if published else None,
        weight_file_bytes=sum(size for _, size, _ in source.weight_files),
        tokenizer_bytes=_tokenizer_bytes(source, vocab), traced=traced is not None,
        layer_shapes=tuple((int(w.shape[0]), int(w.shape[1])) for w in map(weight_view, linears)),
        attention_width=_attention_width(text, hidden),
    )


@inference_mode
def _trace(model, blocks):
    """(hidden, vocab, groups per block) from one forward on meta tensors, or None if the model's code
    needs real values somewhere (remote code, data-dependent branches)."""
    widths: dict[str, int] = {}

    def first_input(module, args, kwargs):
        widths.setdefault("hidden", (args[0] if args else kwargs["hidden_states"]).shape[-1])

    collectors = [BlockStatsCollector(find_linears(b)) for b in blocks]
    ids = torch.zeros((1, _TRACE_TOKENS), dtype=torch.long, device="meta")
    handle = blocks[0].register_forward_pre_hook(first_input, with_kwargs=True)
    try:
        with ExitStack() as stack:
            for collector in collectors:
                stack.enter_context(collector)
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    except Exception as exc:  # noqa: BLE001  any failure means: fall back to the conservative rule
        log.debug("meta trace failed: %s", exc)
        return None
    finally:
        handle.remove()
    groups = tuple(tuple(Group(tuple(g.members), int(g.sumsq.numel())) for g in c.groups) for c in collectors)
    return int(widths["hidden"]), int(out.logits.shape[-1]), groups


def _heads(text_config, hidden: int) -> int:
    for name in ("num_attention_heads", "n_head", "num_heads", "n_heads"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return max(1, hidden // 64)


def _attention_width(text_config, hidden: int) -> int:
    """Heads x head width (Gemma's 4 x 256 is wider than its hidden 640); the hidden width when not given."""
    heads, head_dim = _heads(text_config, hidden), getattr(text_config, "head_dim", None)
    return heads * head_dim if isinstance(head_dim, int) and head_dim > 0 else hidden


def _attention(chosen: str | None, model_class) -> str:
    """What `from_pretrained` will pick: the config's choice, else SDPA where the class supports it."""
    if chosen:
        return str(chosen)
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def _tokenizer_bytes(source: ModelSource, vocab: int) -> int:
    """Tokenizer files as saved beside a pruned model: those of a local folder, else an approximation."""
    if source.is_local and source.gguf_file is None:
        folder = Path(source.location)
        return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and "token" in f.name
                   and f.suffix not in WEIGHT_SUFFIXES)
    return GGUF_TOKENIZER_BYTES_PER_TOKEN * vocab
