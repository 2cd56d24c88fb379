"""The secured local Redis's ACL file and access files, and the stack's switch: no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.errors import DevstackError
from devstack.redis import REDIS_USERS, RedisAccess, acl_file_text
from devstack.stack import secure_stack_requested


def test_the_acl_file_turns_the_default_user_off_and_holds_no_password() -> None:
    passwords = {user.role: f"pw-{user.role}-secret" for user in REDIS_USERS}
    text = acl_file_text(passwords)
    lines = text.splitlines()
    assert lines[0].startswith("user default off ")
    assert [line.split()[1] for line in lines[1:]] == [
        "omni-worker",
        "omni-channel",
        "omni-till",
        "omni-api",
    ]
    assert "secret" not in text
    for line in lines[1:]:
        # Every user starts from nothing, so its rules are all it may do.
        assert " on #" in line and "resetkeys resetchannels -@all" in line


def test_access_files_are_private_and_round_trip(tmp_path: Path) -> None:
    access = RedisAccess(6390, {u.role: "p/w" for u in REDIS_USERS}, tmp_path / "ca.crt")
    access.save(tmp_path)
    assert RedisAccess.load(tmp_path) == access
    assert access.url_for("till") == "rediss://omni-till:p%2Fw@127.0.0.1:6390/0"
    env_file = tmp_path / "channel.env"
    assert env_file.read_text().splitlines() == [
        "OMNI_REDIS_URL=rediss://omni-channel:p%2Fw@127.0.0.1:6390/0",
        f"OMNI_REDIS_CA_FILE={tmp_path / 'ca.crt'}",
    ]
    for private in (env_file, tmp_path / "access.json"):
        assert private.stat().st_mode & 0o077 == 0
    assert RedisAccess.load(tmp_path / "elsewhere") is None
    with pytest.raises(DevstackError, match="use one of worker, channel, till, api"):
        access.url_for("admin")


@pytest.mark.parametrize(
    ("value", "secure"), [("1", True), ("true", True), ("", False), ("0", False), ("no", False)]
)
def test_omni_stack_secure_switches_the_stack(value: str, secure: bool) -> None:
    assert secure_stack_requested({"OMNI_STACK_SECURE": value}) is secure
    assert secure_stack_requested({}) is False
