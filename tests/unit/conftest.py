"""Shared set-up of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from producers.actions import KEY_ENV, new_action_token_key


@pytest.fixture(scope="session", autouse=True)
def action_token_key_in_the_environment() -> Iterator[str]:
    """A random ``OMNI_ACTION_TOKEN_KEY`` for the session, as a deployment provides it.

    The worker (``create_app``, ``step_context``) refuses to sign tokens without a good
    key, and the settings read it from the environment like every other secret; with it
    there, the many tests that build ``Settings()`` and a step context or app need not
    each pass one. Tests of a missing or weak key pass ``action_token_key=`` explicitly.
    """
    with pytest.MonkeyPatch.context() as patch:
        key = new_action_token_key()
        patch.setenv(KEY_ENV, key)
        yield key
