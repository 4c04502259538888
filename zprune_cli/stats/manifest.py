"""`StatsManifest`: a statistics entry's manifest.json as a value (the JSON on disk is unchanged).

`stats.store.manifest_problem` checks the raw JSON field by field first; `StatsManifest.from_json` then
reads a checked dict, and `to_json` writes the same keys in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GroupRecord:
    """Linear layers of one block that read the same input, so share one set of statistics."""

    members: list[str]
    n_tokens: int
    n_sequences: int | None = None
    width: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"members": self.members, "n_tokens": self.n_tokens, "n_sequences": self.n_sequences, "width": self.width}


@dataclass(frozen=True)
class BlockRecord:
    """One decoder block's statistics file and its input groups."""

    index: int
    file: str
    groups: list[GroupRecord]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "file": self.file, "groups": [g.to_json() for g in self.groups]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> BlockRecord:
        groups = [GroupRecord(g["members"], g["n_tokens"], g.get("n_sequences"), g.get("width")) for g in value["groups"]]
        return cls(value["index"], value["file"], groups)


@dataclass(frozen=True)
class StatsManifest:
    """format, key (the digest), key_fields (what it digests), the calibration settings, creation time, the
    blocks, and every file's size and sha256."""

    format: int
    key: str
    settings: dict[str, Any]
    created: str
    blocks: list[BlockRecord] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"size", "sha256"}
    key_fields: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields a later writer adds, kept as they are

    KNOWN = ("format", "key", "key_fields", "settings", "created", "blocks", "files")

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "key": self.key, "key_fields": self.key_fields, "settings": self.settings,
                "created": self.created, "blocks": [b.to_json() for b in self.blocks], "files": self.files, **self.extra}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> StatsManifest:
        """A manifest `manifest_problem` found nothing wrong with."""
        return cls(format=value["format"], key=value["key"], settings=value["settings"], created=value["created"],
                   blocks=[BlockRecord.from_json(b) for b in value["blocks"]], files=value["files"],
                   key_fields=value.get("key_fields"), extra={k: v for k, v in value.items() if k not in cls.KNOWN})
