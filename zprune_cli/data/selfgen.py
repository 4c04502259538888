"""Calibration windows sampled from the model itself: calibration with no dataset at all."""

from __future__ import annotations

from zprune_cli.base.lazy import inference_mode, lazy

torch = lazy("torch")


@inference_mode
def generate_windows(model, tokenizer, nsamples: int, seqlen: int, seed: int, batch_size: int = 8, progress_task=None):
    """LongTensor [nsamples, seqlen]: seeded top-k sampling from the BOS token (or EOS when none)."""
    device = next(model.parameters()).device
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out = torch.empty((nsamples, seqlen), dtype=torch.long)
    try:
        for first in range(0, nsamples, batch_size):
            n = min(batch_size, nsamples - first)
            prompt = torch.full((n, 1), start, dtype=torch.long, device=device)
            ids = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                top_k=50,
                max_new_tokens=seqlen - 1,
                min_new_tokens=seqlen - 1,
                pad_token_id=tokenizer.eos_token_id,
                use_cache=True,
            )
            out[first : first + n] = ids[:, :seqlen].cpu()
            if progress_task is not None:
                progress_task.advance(n)
    finally:
        torch.random.set_rng_state(generator_state)
    return out
