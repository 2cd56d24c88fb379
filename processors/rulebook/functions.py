"""Functions rules may call besides CEL's standard library; all pure."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any


def epoch(timestamp: str) -> float:
    """CEL ``epoch("2026-01-20T10:30:00+01:00")``: RFC 3339 to epoch seconds (double)."""
    return datetime.fromisoformat(timestamp).timestamp()


#: Functions rules may call besides CEL's standard library.
FUNCTIONS: dict[str, Callable[..., Any]] = {"epoch": epoch}
