"""Where a block-by-block prune stands after its finished blocks: what `engine.pipeline` needs to go on from the
next block as if it had never stopped (`verbs.partial` keeps it on disk between processes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from zprune_cli.base.lazy import lazy
from zprune_cli.base.sparsity import LayerCount

torch = lazy("torch")


@dataclass
class ResumePoint:
    """Where a block-by-block prune stands after `blocks` finished blocks."""

    blocks: int = 0
    hidden: torch.Tensor | None = None  # the next block's inputs (a recipe that propagates pruned outputs)
    counts: dict[str, LayerCount] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    grids: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # layer -> (scale, zero)
    layout: dict[str, str] = field(default_factory=dict)  # --permute: layer -> "native" | "permuted"
    absorbed: dict[str, str] = field(default_factory=dict)
    unrouted: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the pruning time of the sittings before
    saved: dict = field(default_factory=dict)  # the streaming save's weight map and total size

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {} if self.hidden is None else {"hidden": self.hidden.contiguous()}
        for name, (scale, zero) in self.grids.items():
            out[f"scale:{name}"], out[f"zero:{name}"] = scale.contiguous(), zero.contiguous()
        return out

    def as_json(self, job: str) -> dict:
        return {"job": job, "blocks": self.blocks, "counts": {k: [v.params, v.nonzeros] for k, v in self.counts.items()},
                "errors": self.errors, "grids": sorted(self.grids), "layout": self.layout, "absorbed": self.absorbed,
                "unrouted": self.unrouted, "seconds": self.seconds, "saved": self.saved}

    @classmethod
    def of(cls, record: dict, tensors: dict[str, torch.Tensor]) -> ResumePoint:
        return cls(blocks=record["blocks"], hidden=tensors.get("hidden"),
                   counts={k: LayerCount(*v) for k, v in record["counts"].items()}, errors=record["errors"],
                   grids={n: (tensors[f"scale:{n}"], tensors[f"zero:{n}"]) for n in record["grids"]},
                   layout=record["layout"], absorbed=record["absorbed"], unrouted=record["unrouted"],
                   seconds=record["seconds"], saved=record["saved"])
