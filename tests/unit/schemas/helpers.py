"""Sample loading shared by the schema tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import SAMPLES_ROOT


@dataclass(frozen=True)
class InvalidSample:
    """One ``samples/invalid/*.json``: a message and the rejection it must get."""

    path: Path
    channel: str
    key: bytes | None
    value: bytes | None
    reason: str
    field: str
    note: str
    max_bytes: int

    @property
    def id(self) -> str:
        return self.path.stem

    @property
    def event(self) -> Any:
        """The parsed value, or None when it is not JSON."""
        try:
            return json.loads(self.value) if self.value else None
        except (ValueError, UnicodeDecodeError):
            return None


def valid_event_paths() -> list[Path]:
    return sorted((SAMPLES_ROOT / "valid").glob("*/*.json"))


def valid_events() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, json.loads(path.read_text())) for path in valid_event_paths()]


def invalid_samples() -> list[InvalidSample]:
    out = []
    for path in sorted((SAMPLES_ROOT / "invalid").glob("*.json")):
        raw = json.loads(path.read_text())
        if "value_hex" in raw:
            value: bytes | None = bytes.fromhex(raw["value_hex"])
        else:
            value = None if raw["value"] is None else raw["value"].encode()
        out.append(
            InvalidSample(
                path=path,
                channel=raw["channel"],
                key=None if raw["key"] is None else raw["key"].encode(),
                value=value,
                reason=raw["reason"],
                field=raw["field"],
                note=raw["note"],
                max_bytes=raw.get("max_bytes", 64 * 1024),
            )
        )
    return out


def record_samples(validity: str) -> list[tuple[str, Path, Any]]:
    """``(kind, path, document)`` of ``samples/records/<validity>/<kind>/*.json``."""
    return [
        (path.parent.name, path, json.loads(path.read_text()))
        for path in sorted((SAMPLES_ROOT / "records" / validity).glob("*/*.json"))
    ]
