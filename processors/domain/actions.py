"""One-tap action tokens: they live in the contract package, :mod:`producers.actions`.

This module stays because the README tells trigger consumers to check tokens with
``processors.domain.actions.verify_action_token``; the worker itself imports
:mod:`producers.actions`.
"""

from producers.actions import (
    ACCEPT,
    ACTION_KINDS,
    DECLINE,
    UNSUBSCRIBE,
    ActionTokenKeys,
    WeakActionTokenKeyError,
    action_token,
    actions_for,
    verify_action_token,
)

__all__ = [
    "ACCEPT",
    "ACTION_KINDS",
    "DECLINE",
    "UNSUBSCRIBE",
    "ActionTokenKeys",
    "WeakActionTokenKeyError",
    "action_token",
    "actions_for",
    "verify_action_token",
]
