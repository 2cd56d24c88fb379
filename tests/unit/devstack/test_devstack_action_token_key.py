"""`make up` gives its worker a random action-token key of its own, unless one is set."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from devstack.stack import StackPaths, _wipe, worker_env
from processors.settings import Settings
from producers.actions import check_action_token_key


def test_a_stack_without_a_key_gets_its_own_random_one_and_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMNI_ACTION_TOKEN_KEY")
    paths = StackPaths(tmp_path / "stack")
    first = worker_env(Settings(), paths)["OMNI_ACTION_TOKEN_KEY"]
    check_action_token_key(first)  # the worker accepts it
    assert stat.S_IMODE(paths.action_token_key.stat().st_mode) == 0o600
    # A restarted worker signs with the same key: tokens already sent still verify.
    assert worker_env(Settings(), paths)["OMNI_ACTION_TOKEN_KEY"] == first
    other = worker_env(Settings(), StackPaths(tmp_path / "other"))["OMNI_ACTION_TOKEN_KEY"]
    assert other != first
    _wipe(paths, say=lambda _: None)
    assert not paths.action_token_key.exists()
    assert worker_env(Settings(), paths)["OMNI_ACTION_TOKEN_KEY"] != first


def test_a_key_the_operator_set_is_passed_on_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = StackPaths(tmp_path / "stack")
    # Even a weak one: the worker refuses it with its own message, devstack shows that.
    monkeypatch.setenv("OMNI_ACTION_TOKEN_KEY", "too-short")
    assert worker_env(Settings(), paths)["OMNI_ACTION_TOKEN_KEY"] == "too-short"
    assert not paths.action_token_key.exists()
