"""What makes two measured numbers comparable: a `Protocol`, one frozen value per kind of metric.

The results store keys every row by its protocol's canonical JSON, and `compare` resumes a grid by
looking its expected protocols up there, so the JSON form of each kind is a stored format: `as_dict`
gives today's dict field for field (tests/test_pinned.py pins a stored row). Each kind is built by one
function, used both to measure and to resume (`evaluation.run.perplexity_protocol`,
`zeroshot_protocol`; `SPARSITY` here).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar


class Protocol:
    """Base of the protocol kinds; `Protocol.from_dict` reads any stored one back."""

    KINDS: ClassVar[list[type[Protocol]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Protocol.KINDS.append(cls)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        """The canonical JSON the results store keys rows by (sorted keys, no spaces)."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), default=str)

    @staticmethod
    def from_dict(value: dict[str, Any] | Protocol | None) -> Protocol:
        """The kind whose fields are exactly the dict's keys; any other dict (a speed measurement, a row of
        another version) is kept as it was recorded, as an `OpenProtocol`."""
        if isinstance(value, Protocol):
            return value
        value = value or {}
        for kind in Protocol.KINDS:
            names = [f.name for f in fields(kind)]  # type: ignore[arg-type]
            if kind is not OpenProtocol and set(names) == set(value):
                return kind(**value)
        return OpenProtocol.of(value)


@dataclass(frozen=True)
class PerplexityProtocol(Protocol):
    """One perplexity: the text (by name, split, identity and content hash) cut into windows of seqlen."""

    dataset: str
    split: str
    seqlen: int
    n_windows: int
    n_tokens: int  # n_windows * (seqlen - 1): each window predicts all but its first token
    source: str
    data_hash: str | None


@dataclass(frozen=True)
class ZeroShotProtocol(Protocol):
    """One lm-eval task's accuracy (acc and acc_norm share it: one run gives both)."""

    task: str
    num_fewshot: int
    limit: int | None


@dataclass(frozen=True)
class SparsityProtocol(Protocol):
    """The layer set whose zeros are counted."""

    layers: str = "pruned decoder-block Linear"


@dataclass(frozen=True, eq=False)
class OpenProtocol(Protocol):
    """The fields as recorded: speed (which depends on the moment and is never a resume key), size on disk
    (no protocol), and rows of other versions."""

    items: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, value: dict[str, Any]) -> OpenProtocol:
        return cls(tuple(value.items()))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items)

    def __eq__(self, other: object) -> bool:  # the fields, in any order (as the store compares them)
        return isinstance(other, OpenProtocol) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())


SPARSITY = SparsityProtocol()
