"""`ExportSummary`: what `export` wrote, its sizes and warnings (the JSON of `zprune export --json`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ExportSummary:
    """One export. Bytes of tensor data (headers excluded, see exports.io.Sizes): dense as in the source, as
    stored, and the values + 1 bit ideal; pruned_*: the pruned weights alone; blocks_*: the decoder blocks'
    tensors in bfloat16 and as stored; *_disk_bytes: files on disk."""

    format: str
    source: str
    destination: str
    files: list[str]
    pruned_layers: int
    overall_sparsity: float
    dense_bytes: int
    stored_bytes: int
    theoretical_bytes: int
    pruned_dense_bytes: int
    pruned_stored_bytes: int
    pruned_theoretical_bytes: int
    weights_disk_bytes: int
    disk_bytes: int
    blocks_bf16_bytes: int
    blocks_stored_bytes: int
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)
