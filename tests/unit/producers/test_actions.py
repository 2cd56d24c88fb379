"""One-tap action tokens: key ids and rotation, refused keys, and a verifier that only
ever raises its documented ``ValueError``, whatever it is handed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import processors.__main__ as worker_main
from processors.app import create_app
from processors.settings import Settings
from producers.actions import (
    ACTION_KINDS,
    MIN_KEY_BYTES,
    PUBLIC_EXAMPLE_KEYS,
    ActionTokenKeys,
    WeakActionTokenKeyError,
    action_key_id,
    action_token,
    actions_for,
    check_action_token_key,
    new_action_token_key,
    verify_action_token,
)

ROOT = Path(__file__).resolve().parents[3]
TRIGGER_SCHEMA = ROOT / "schemas/iglu/com.omnichannel/trigger/jsonschema/1-0-1"
OLD = b"an-old-key-of-32-bytes-or-more-000000"
NEW = b"the-new-key-of-32-bytes-or-more-11111"
NOW = 1_790_000_000.0
LATER = NOW + 3600


def token_pattern() -> re.Pattern[str]:
    """The published trigger schema's pattern for an action token (not to be changed)."""
    schema = json.loads(TRIGGER_SCHEMA.read_text())
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "token" in node and isinstance(node["token"], dict) and "pattern" in node["token"]:
                found.append(node["token"]["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert found, f"{TRIGGER_SCHEMA} has no token pattern"
    return re.compile(found[0])


# --- the format ----------------------------------------------------------------------


@given(
    trigger_id=st.text(min_size=1, max_size=80),
    customer_id=st.text(min_size=1, max_size=80),
    expires_at=st.floats(min_value=0, max_value=253402300799),
)
@settings(max_examples=200, deadline=None)
def test_every_token_matches_the_published_trigger_schema(
    trigger_id: str, customer_id: str, expires_at: float
) -> None:
    pattern = token_pattern()
    for action in actions_for(NEW, trigger_id, customer_id, expires_at):
        assert pattern.fullmatch(action["token"]), action["token"]
        assert action["token"].startswith(action_key_id(NEW) + ".")


def test_a_token_grants_its_kind_for_its_trigger_and_customer_until_it_expires() -> None:
    for kind in ACTION_KINDS:
        token = action_token(NEW, "t1", "c1", kind, LATER)
        assert verify_action_token(NEW, token, "t1", "c1", NOW) == kind
        assert verify_action_token(NEW, token.encode(), "t1", "c1", NOW) == kind
        for trigger_id, customer_id in (("t2", "c1"), ("t1", "c2")):
            with pytest.raises(ValueError, match="does not match this trigger"):
                verify_action_token(NEW, token, trigger_id, customer_id, NOW)
        with pytest.raises(ValueError, match="expired"):
            verify_action_token(NEW, token, "t1", "c1", LATER)
    key_id, expires, _, signature = action_token(NEW, "t1", "c1", "accept", LATER).split(".")
    with pytest.raises(ValueError, match="does not match"):  # another kind, same signature
        verify_action_token(NEW, f"{key_id}.{expires}.decline.{signature}", "t1", "c1", NOW)


# --- rotation ------------------------------------------------------------------------


def test_after_a_rotation_tokens_of_the_previous_key_still_verify() -> None:
    issued_before = action_token(OLD, "t1", "c1", "accept", LATER)
    rotated = ActionTokenKeys(current=NEW, previous=(OLD,))
    assert verify_action_token(rotated, issued_before, "t1", "c1", NOW) == "accept"
    assert verify_action_token([NEW, OLD], issued_before, "t1", "c1", NOW) == "accept"
    issued_after = action_token(rotated.current, "t1", "c1", "accept", LATER)
    assert verify_action_token(rotated, issued_after, "t1", "c1", NOW) == "accept"
    # Once the previous key is dropped, its tokens are refused, naming the key id.
    with pytest.raises(ValueError, match=f"key id {action_key_id(OLD)}"):
        verify_action_token(ActionTokenKeys(NEW), issued_before, "t1", "c1", NOW)


def test_a_token_cannot_borrow_another_keys_id() -> None:
    forged = action_token(OLD, "t1", "c1", "accept", LATER)
    _, rest = forged.split(".", 1)
    with pytest.raises(ValueError, match="does not match"):
        verify_action_token([NEW, OLD], f"{action_key_id(NEW)}.{rest}", "t1", "c1", NOW)


def test_tokens_issued_before_key_ids_verify_against_every_key_until_they_expire() -> None:
    import base64
    import hmac
    from hashlib import sha256

    digest = hmac.new(OLD, f"t1|c1|accept|{int(LATER)}".encode(), sha256).digest()[:24]
    legacy = f"{int(LATER)}.accept.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"
    assert verify_action_token(ActionTokenKeys(NEW, (OLD,)), legacy, "t1", "c1", NOW) == "accept"
    with pytest.raises(ValueError, match="does not match"):
        verify_action_token(NEW, legacy, "t1", "c1", NOW)
    with pytest.raises(ValueError, match="expired"):
        verify_action_token(OLD, legacy, "t1", "c1", LATER)


def test_keys_from_the_environment_and_their_repr_hides_them() -> None:
    keys = ActionTokenKeys.from_env(
        {
            "OMNI_ACTION_TOKEN_KEY": NEW.decode(),
            "OMNI_ACTION_TOKEN_PREVIOUS_KEYS": f"{OLD.decode()}, ",
        }
    )
    assert keys == ActionTokenKeys(NEW, (OLD,))
    assert NEW.decode() not in repr(keys) and OLD.decode() not in repr(keys)
    assert action_key_id(NEW) in repr(keys)
    with pytest.raises(WeakActionTokenKeyError, match="OMNI_ACTION_TOKEN_KEY is not set"):
        ActionTokenKeys.from_env({})


# --- refused keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "says"),
    [
        (None, "is not set"),
        ("", "is not set"),
        ("dev-only-action-token-key-change-me", "published example"),
        ("replace-with-a-random-key-of-at-least-32-bytes", "published example"),
        ("k" * (MIN_KEY_BYTES - 1), f"{MIN_KEY_BYTES - 1} bytes long"),
    ],
)
def test_weak_keys_are_refused_with_how_to_make_a_good_one(key: str | None, says: str) -> None:
    with pytest.raises(WeakActionTokenKeyError, match=says) as refused:
        check_action_token_key(key)
    assert "secrets.token_urlsafe(32)" in str(refused.value)
    # A verifier with such a key refuses every token: it fails closed, never open.
    token = action_token(b"k" * 40, "t1", "c1", "accept", LATER)
    with pytest.raises(WeakActionTokenKeyError):
        verify_action_token((key or "").encode(), token, "t1", "c1", NOW)


def test_a_token_minted_with_the_old_default_key_no_longer_verifies() -> None:
    old_default = b"dev-only-action-token-key-change-me"
    forged = action_token(old_default, "anyone", "any-customer", "accept", NOW + 50 * 365 * 86400)
    with pytest.raises(ValueError):
        verify_action_token(old_default, forged, "anyone", "any-customer", NOW)
    with pytest.raises(ValueError):
        verify_action_token(NEW, forged, "anyone", "any-customer", NOW)


def test_generated_keys_are_accepted_and_differ() -> None:
    first, second = new_action_token_key(), new_action_token_key()
    assert first != second
    assert check_action_token_key(first) == first.encode()


def test_every_example_key_in_the_docs_and_deploy_files_is_refused() -> None:
    """A key shown in a document is public: each one must be on the refused list."""
    assignment = re.compile(r"OMNI_ACTION_TOKEN_(?:PREVIOUS_)?KEYS?[=:]\s*[\"']?([^\s\"'`]+)")
    for path in (ROOT / "README.md", ROOT / "docker-compose.yml", ROOT / "Dockerfile"):
        for value in assignment.findall(path.read_text()):
            if value.startswith("$") or value.startswith("<"):
                continue  # the environment's value (${VAR...}, $(command)), a placeholder
            assert value in PUBLIC_EXAMPLE_KEYS, (
                f"{path.name} shows OMNI_ACTION_TOKEN_KEY={value}: add it to "
                "producers.actions.PUBLIC_EXAMPLE_KEYS so no deployment can use it"
            )


# --- the worker refuses to start -----------------------------------------------------


def test_the_worker_refuses_to_start_without_a_good_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OMNI_ACTION_TOKEN_KEY")
    monkeypatch.setenv("OMNI_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # nothing may connect anyway
    assert worker_main.main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and "OMNI_ACTION_TOKEN_KEY is not set" in err
    assert "secrets.token_urlsafe(32)" in err
    with pytest.raises(WeakActionTokenKeyError, match="published example"):
        create_app(Settings(action_token_key="dev-only-action-token-key-change-me"))


def test_settings_print_the_keys_masked() -> None:
    shown = Settings(
        action_token_key=NEW.decode(), action_token_previous_keys=OLD.decode()
    ).model_dump_json()
    assert NEW.decode() not in shown and OLD.decode() not in shown


# --- any input: only the documented error --------------------------------------------


def _mutations(token: str) -> st.SearchStrategy[str]:
    """A valid token with one character replaced, inserted or removed."""
    return st.tuples(st.integers(0, len(token) - 1), st.characters(), st.sampled_from("rid")).map(
        lambda edit: (
            token[: edit[0]] + edit[1] + token[edit[0] + 1 :]
            if edit[2] == "r"
            else token[: edit[0]] + edit[1] + token[edit[0] :]
            if edit[2] == "i"
            else token[: edit[0]] + token[edit[0] + 1 :]
        )
    )


VALID = action_token(NEW, "t1", "c1", "accept", LATER)
ANY_TOKEN = st.one_of(
    st.text(max_size=600),
    st.binary(max_size=600),
    st.from_regex(r"[A-Za-z0-9_.-]{0,80}", fullmatch=True),
    st.builds(
        lambda key_id, expires, kind, signature: f"{key_id}.{expires}.{kind}.{signature}",
        st.text(max_size=12),
        st.text(max_size=30),
        st.sampled_from([*ACTION_KINDS, "", "x"]),
        st.text(max_size=40),
    ),
    _mutations(VALID),
)


@given(
    token=ANY_TOKEN,
    trigger_id=st.one_of(st.just("t1"), st.text(max_size=40)),
    customer_id=st.one_of(st.just("c1"), st.text(max_size=40)),
)
@settings(max_examples=1500, deadline=None)
def test_any_token_is_granted_or_refused_with_a_value_error_only(
    token: str | bytes, trigger_id: str, customer_id: str
) -> None:
    try:
        kind = verify_action_token([NEW, OLD], token, trigger_id, customer_id, NOW)
    except ValueError as refused:
        assert str(refused)
    else:
        # Only the untouched token grants anything, and only for its own trigger.
        assert (token, trigger_id, customer_id, kind) == (VALID, "t1", "c1", "accept")


@pytest.mark.parametrize(
    "token",
    [
        f"{VALID[:-2]}é€",  # a non-ASCII signature (raised TypeError before)
        f"{VALID[:-2]}\udc80x",  # a lone surrogate
        "\uff11\uff12\uff13.accept.abc",  # fullwidth digits, which int() would take
        "1_790_000_000.accept.abc",  # int() takes underscores too
        "9" * 5000 + ".accept.abc",  # int() refuses this many digits with its own message
        b"\xff\xfe.accept.abc",
        VALID.encode("utf-16"),
    ],
)
def test_tokens_that_once_crashed_the_verifier_are_refused(token: str | bytes) -> None:
    with pytest.raises(ValueError, match="malformed action token"):
        verify_action_token(NEW, token, "t1", "c1", NOW)
