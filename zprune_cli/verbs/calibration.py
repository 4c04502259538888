"""`calibrate`: run calibration text through the model once, one block at a time, into the store."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from zprune_cli import __version__

from zprune_cli.base import distributed
from zprune_cli.base.lazy import inference_mode, lazy
from zprune_cli.data.selfgen import generate_windows
from zprune_cli.data.sources import SELF, TextSource, resolve_source
from zprune_cli.data.windows import draw_windows, windows_bytes
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.machine import device_memory_bytes, free_disk_bytes, host_memory_bytes, human_bytes
from zprune_cli.models.blocks import find_blocks, find_linears, in_features
from zprune_cli.models.handle import ModelHandle
from zprune_cli.models.load import hidden_width, max_length
from zprune_cli.models.runner import block_inputs_bytes, capture_block_inputs
from zprune_cli.models.walk import walk_blocks
from zprune_cli.engine.pipeline import all_finite
from zprune_cli.base.progress import Progress, ensure
from zprune_cli.base.settings import Calibration, Settings
from zprune_cli.base.settings import resolve as resolve_settings
from zprune_cli.stats.collect import BlockStatsCollector, reduce_groups
from zprune_cli.stats.store import CorruptEntry, StatsEntry, StatsKey, StatsStore

torch = lazy("torch")

DEFAULT_DATA = Calibration.data
DEFAULT_NSAMPLES = Calibration.nsamples
DEFAULT_SEQLEN = Calibration.seqlen
DEFAULT_SEED = Calibration.seed
log = logging.getLogger("zprune")


@dataclass
class CalibrationResult:
    key: str  # the store entry's (what `zprune cache` names): it may hold more than was asked for
    path: Path
    size_bytes: int
    seconds: float
    hit: bool
    entry: StatsEntry
    calibration_key: str  # the calibration's own (StatsKey.calibration_digest): what results and prunes record

    def summary(self) -> dict:
        return {
            "key": self.key,
            "calibration_key": self.calibration_key,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 3),
            "hit": self.hit,
            "gram": self.entry.has_gram,
            "block_statistics": self.entry.has_blocks,
            "settings": self.entry.manifest.settings,
        }


def stats_key(handle: ModelHandle, text: TextSource, nsamples: int, seqlen: int, seed: int, gram: bool,
              blocks: bool = True) -> StatsKey:
    return StatsKey(
        model_fingerprint=handle.source.fingerprint,
        dtype=handle.dtype_name,
        data=text.identity,
        data_hash=text.content_hash,
        nsamples=nsamples,
        seqlen=seqlen,
        seed=seed,
        gram=gram,
        blocks=blocks,
    )


def calibrate(
    model: str | ModelHandle = "smollm2-135m",
    calibration: Calibration | None = None,
    *,
    gram: bool = False,
    inputs_only: bool = False,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> CalibrationResult:
    """Compute (or find) the activation statistics of `model` on `calibration`; return the store entry.

    gram: also the Gram matrices. inputs_only: only the windows and block 0's inputs, no pass through
    the blocks (all that pruned propagation needs); an entry with more is used when there is one.

    calibration=None takes the settings' defaults (C4, 128 x 2048, seed 0 unless configured). A second
    call with the same key is a cache hit: no model load, no forward pass.
    """
    started = time.perf_counter()
    settings = resolve_settings(settings)
    calibration = calibration or settings.calibration
    progress = ensure(progress)
    handle = ModelHandle.of(model, settings, progress)
    text = resolve_source(calibration.data, "train", settings.data_dir)
    key = stats_key(handle, text, calibration.nsamples, calibration.seqlen, calibration.seed, gram and not inputs_only,
                    not inputs_only)
    store = StatsStore(settings.cache_dir)
    if not _stored(store, key):  # a cache hit reads no config (a GGUF's header costs seconds); a miss is
        check_memory(handle, calibration)  # refused before the claim makes any folder
    if distributed.active():  # under torchrun only (reading the device imports torch, which a cache hit needs not)
        distributed.start(handle.device, calibration.nsamples)

    # a damaged entry is removed and computed again
    with store.claimed(key, lambda: store.lookup(key, repair=True), progress) as entry:
        if entry is None:
            _compute(handle, text, key, store, progress, settings)
            entry = store.share(store.lookup(key) if distributed.is_main() else None)
            assert entry is not None
            return CalibrationResult(key.digest, entry.path, _size(entry), time.perf_counter() - started, False, entry,
                                     key.calibration_digest)
    return CalibrationResult(entry.key, entry.path, _size(entry), time.perf_counter() - started, True, entry,
                             key.calibration_digest)


def _stored(store: StatsStore, key: StatsKey) -> bool:
    try:
        return store.lookup(key) is not None
    except CorruptEntry:
        return False  # removed (and said so) under the claim, then computed again


def _size(entry: StatsEntry) -> int:
    """The entry's size on disk, from its manifest (a torchrun rank on another node may not see the files)."""
    return entry.size_bytes() if entry.path.is_dir() else sum(info["size"] for info in entry.manifest.files.values())


def calibration_inputs(handle: ModelHandle, text: TextSource, nsamples: int, seqlen: int, seed: int, progress: Progress,
                       settings: Settings | None = None):
    """Token windows [nsamples, seqlen] for calibration, after the checks of `drawn_windows`."""
    windows = drawn_windows(handle, text, Calibration(text.spec, nsamples, seqlen, seed), progress, settings)
    if windows is not None:
        return windows
    with progress.task("Sampling calibration text from the model", nsamples) as task:
        return generate_windows(handle.model, handle.tokenizer, nsamples, seqlen, seed, progress_task=task)


def drawn_windows(handle: ModelHandle, text: TextSource, cal: Calibration, progress: Progress,
                  settings: Settings | None = None):
    """What a cold calibration does before the model loads (the config and tokenizer suffice): seqlen against the
    model, the windows drawn (None for text sampled from the model), a text too short for them refused and one
    they would overlap heavily said; with `settings`, an entry that cannot fit on the cache's disk refused."""
    limit = max_length(handle.config)  # a small read: the model must be reachable before any dataset is fetched
    loaded = None if text.name == SELF else text.load()  # bad data is named first
    if limit is not None and cal.seqlen > limit:
        raise ZpruneUsageError(f"--seqlen {cal.seqlen} is beyond the model's maximum of {limit} tokens")
    drawn = None
    if loaded is not None:
        with progress.task(f"Tokenising {text.description}", None):
            drawn = draw_windows(loaded, handle.tokenizer, cal.nsamples, cal.seqlen, cal.seed)
        warning = drawn.fit.warning(text.description)
        if warning:
            log.warning(warning)
    check_disk(handle, cal.nsamples, cal.seqlen, settings)
    return drawn.windows if drawn else None


def check_calibration(handle: ModelHandle, calibration: Calibration, settings: Settings, progress: Progress | None = None) -> None:
    """Every refusal and warning a cold calibration gives before the model loads (what --dry-run says)."""
    text = resolve_source(calibration.data, "train", settings.data_dir)
    check_memory(handle, calibration)
    drawn_windows(handle, text, calibration, ensure(progress), settings)


def check_memory(handle: ModelHandle, calibration: Calibration) -> None:
    """Refuse (exit 2), before any work, windows this machine cannot hold: their token ids (host memory) and block
    0's inputs with a same-size buffer (the device's memory; the host's on the CPU), as --dry-run counts them."""
    n, seqlen = calibration.nsamples, calibration.seqlen
    ids = windows_bytes(n, seqlen)
    inputs = 2 * block_inputs_bytes(n, seqlen, hidden_width(handle.config) or 0, handle.dtype)
    device = device_memory_bytes(handle.device)
    checks = [(ids + (inputs if device is None else inputs // 2), host_memory_bytes(), "memory (RAM and swap)")]
    if device is not None:  # on an accelerator the host holds one copy of the inputs, to write them to the store
        checks.append((inputs, device, f"{handle.device} memory"))
    for need, have, what in checks:
        if have is not None and need > have:
            raise ZpruneUsageError(
                f"--nsamples {n} x --seqlen {seqlen} needs {human_bytes(need)} of {what} for the windows (token ids "
                f"{human_bytes(ids)}) and block 0's inputs with their buffer ({human_bytes(inputs)}); this machine has "
                f"{human_bytes(have)}: lower --nsamples or --seqlen")


def check_disk(handle: ModelHandle, nsamples: int, seqlen: int, settings: Settings | None) -> None:
    """Refuse (exit 1) before the model loads an entry whose block 0's inputs alone (written whatever the entry
    holds) exceed the cache disk's free space: the write would fail after all the work."""
    if settings is None:
        return
    need = block_inputs_bytes(nsamples, seqlen, hidden_width(handle.config) or 0, handle.dtype) + windows_bytes(nsamples, seqlen)
    free = free_disk_bytes(settings.cache_dir)
    if free is not None and need > free:
        raise ZpruneError(f"the statistics entry needs at least {human_bytes(need)} (block 0's inputs of --nsamples "
                          f"{nsamples} x --seqlen {seqlen}) and the disk of {settings.cache_dir} has {human_bytes(free)} "
                          "free; free space, point --cache-dir elsewhere, or lower --nsamples or --seqlen")


def check_finite(groups, block: str) -> None:
    """Refuse to store statistics with NaN or inf (a broken model or an fp16 overflow), naming the layers."""
    for group in groups:
        for tensor in (group.sumsq, group.gram):
            if tensor is not None and not all_finite(tensor):
                raise ZpruneError(f"the activations reaching {block}.{group.name} ({', '.join(group.members)}) hold NaN or inf; "
                                  "nothing was stored. Check the model file, or calibrate in float32 (--dtype float32)")


@inference_mode
def _compute(handle: ModelHandle, text: TextSource, key: StatsKey, store: StatsStore, progress: Progress,
             settings: Settings | None = None) -> None:
    """Every rank tokenises the same windows and runs its shard of them; under torchrun the statistics are
    summed over the ranks block by block, and rank 0 alone writes the entry (with all windows' inputs)."""
    windows = calibration_inputs(handle, text, key.nsamples, key.seqlen, key.seed, progress, settings)
    model = handle.model
    mine = distributed.shard(key.nsamples)  # all windows with one process
    with progress.task("Embedding calibration windows", len(mine)) as task:
        inputs = capture_block_inputs(model, windows[mine.start : mine.stop], progress_task=task)
    blocks_name, blocks = find_blocks(model)
    all_hidden = distributed.gather_windows(inputs.hidden, key.nsamples)  # None on ranks other than 0
    with _writer(store, key, _manifest_settings(handle, text, key, blocks_name, len(blocks))) as writer:
        if writer is not None:
            writer.write_inputs(windows, all_hidden)
        if not key.blocks:
            return

        def collector(index: int, block) -> BlockStatsCollector:
            return BlockStatsCollector(find_linears(block), with_gram=key.gram, width_of=in_features)

        def store_block(index: int, prefix: str, block, collected: BlockStatsCollector) -> None:
            groups = reduce_groups(collected.groups)  # summed over the ranks under torchrun
            check_finite(groups, prefix.rstrip("."))
            if writer is not None:
                writer.write_block(index, groups)

        with progress.task(f"Calibrating {len(blocks)} blocks", len(blocks) * len(mine)) as task:
            walk_blocks(model, store_block, inputs.hidden, inputs.block_kwargs, collector=collector,
                        per_window=task.advance)


def _writer(store: StatsStore, key: StatsKey, settings: dict):
    """The entry's writer on rank 0 (the only process there is without torchrun); nothing elsewhere."""
    return store.writer(key, settings) if distributed.is_main() else nullcontext()


def _manifest_settings(handle: ModelHandle, text: TextSource, key: StatsKey, blocks_name: str, n_blocks: int) -> dict:
    return {
        "model": handle.source.spec,
        "model_location": handle.source.location,
        "gguf_file": handle.source.gguf_file,
        "revision": handle.source.revision,
        "fingerprint": handle.source.fingerprint,
        "dtype": handle.dtype_name,
        "data": text.spec,
        "data_description": text.description,
        "data_identity": text.identity,
        "nsamples": key.nsamples,
        "seqlen": key.seqlen,
        "seed": key.seed,
        "gram": key.gram,
        "block_statistics": key.blocks,
        "blocks": blocks_name,
        "n_blocks": n_blocks,
        "zprune_version": __version__,
    }
