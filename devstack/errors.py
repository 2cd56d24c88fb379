"""The one exception type of the dev stack."""

from __future__ import annotations


class DevstackError(RuntimeError):
    """Something the developer must fix; the message says what and how."""
