"""The Customer 360 API without Redis: auth, key escaping, response shaping, routes.

The routes run on aiohttp's test server over a dict standing in for Redis (MGET, GET,
PING); tests/integration/test_api.py runs them on the real Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

import processors.api.auth as auth_module
from processors.api import ApiTokensError, create_api
from processors.api.app import ACCESS_LOGGER, ROUTE_SCOPES, RUNNER_OPTIONS
from processors.api.auth import (
    CUSTOMERS_READ,
    IDENTIFIERS_READ,
    SCOPES,
    Authenticator,
    AuthError,
    parse_api_tokens,
    token_sha256,
)
from processors.api.openapi import openapi_document
from processors.api.views import (
    IDENTIFIER_TYPES,
    customer_keys,
    customer_view,
    identifier_read_key,
)
from processors.domain.model import format_time
from processors.settings import Settings

NOW = 1_780_000_000.0
CALLCENTER_TOKEN = "cc-token-0123456789abcdef"
ATM_TOKEN = "atm-token-0123456789abcdef"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


TOKENS = json.dumps(
    {
        "callcenter": {
            "sha256": sha(CALLCENTER_TOKEN),
            "scopes": [CUSTOMERS_READ, IDENTIFIERS_READ],
        },
        "atm": {"sha256": sha(ATM_TOKEN), "scopes": [IDENTIFIERS_READ]},
    }
)


# --- OMNI_API_TOKENS ---------------------------------------------------------------------


def test_the_tokens_setting_names_callers_by_the_sha256_of_their_token() -> None:
    callers = {c.name: c for c in parse_api_tokens(TOKENS)}
    assert callers["callcenter"].digest == token_sha256(CALLCENTER_TOKEN)
    assert callers["atm"].scopes == {IDENTIFIERS_READ}
    # Upper-case hex (some tools print it) is the same hash.
    upper = json.dumps({"x": {"sha256": sha("t").upper(), "scopes": [CUSTOMERS_READ]}})
    assert parse_api_tokens(upper)[0].digest == token_sha256("t")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "OMNI_API_TOKENS is not set"),
        ("  ", "OMNI_API_TOKENS is not set"),
        ("callcenter=abc", "not JSON"),
        ("[]", "not a JSON object"),
        ("{}", "not a JSON object"),
        ('{"cc": {"sha256": "SECRETTOKEN", "scopes": ["customers:read"]}}', "64 hex digits"),
        ('{"cc": {"sha256": "' + "a" * 64 + '", "scopes": []}}', "non-empty list"),
        ('{"cc": {"sha256": "' + "a" * 64 + '", "scopes": ["customers:write"]}}', "scopes"),
        ('{"cc": {"sha256": "' + "a" * 64 + '"}}', 'exactly "sha256" and "scopes"'),
        ('{"c c": {"sha256": "' + "a" * 64 + '", "scopes": ["customers:read"]}}', "caller name"),
        (
            '{"a": {"sha256": "' + "a" * 64 + '", "scopes": ["customers:read"]}, '
            '"b": {"sha256": "' + "A" * 64 + '", "scopes": ["customers:read"]}}',
            "same token hash",
        ),
    ],
)
def test_a_missing_or_malformed_tokens_setting_says_what_to_set(
    text: str | None, says: str
) -> None:
    with pytest.raises(ApiTokensError, match=says) as refused:
        parse_api_tokens(text)
    assert "SECRETTOKEN" not in str(refused.value)  # never quotes the value


def test_the_tokens_are_masked_when_the_settings_print() -> None:
    settings = Settings(api_tokens=TOKENS)
    shown = f"{settings!r} {settings} {settings.model_dump_json()}"
    assert sha(CALLCENTER_TOKEN) not in shown and '"sha256"' not in shown
    assert settings.as_env({})["OMNI_API_TOKENS"] == TOKENS  # a child process gets them


# --- the Authorization header -------------------------------------------------------------


AUTH = Authenticator(parse_api_tokens(TOKENS))


def refusal(header: str | None, scope: str = CUSTOMERS_READ) -> AuthError:
    with pytest.raises(AuthError) as refused:
        AUTH.authorize(header, scope)
    return refused.value


def test_a_known_token_is_its_caller() -> None:
    assert AUTH.authorize(f"Bearer {CALLCENTER_TOKEN}", CUSTOMERS_READ).name == "callcenter"
    assert AUTH.authorize(f"bearer  {ATM_TOKEN} ", IDENTIFIERS_READ).name == "atm"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, ""),
        ("", ""),
        ("Bearer", "invalid_request"),
        ("Bearer ", "invalid_request"),
        (f"Basic {CALLCENTER_TOKEN}", "invalid_request"),
        (f"Bearer {CALLCENTER_TOKEN} extra", "invalid_request"),
        (f'Bearer "{CALLCENTER_TOKEN}"', "invalid_request"),
        (CALLCENTER_TOKEN, "invalid_request"),
        ("Bearer not-a-known-token", "invalid_token"),
        (f"Bearer {CALLCENTER_TOKEN}x", "invalid_token"),
        (f"Bearer {sha(CALLCENTER_TOKEN)}", "invalid_token"),  # the hash is not the token
    ],
)
def test_no_malformed_or_unknown_token_is_401_with_www_authenticate(
    header: str | None, code: str
) -> None:
    refused = refusal(header)
    assert refused.status == 401 and refused.code == code
    challenge = refused.www_authenticate()
    assert challenge.startswith('Bearer realm="omni-api"')
    assert (f'error="{code}"' in challenge) == bool(code)
    assert "Authorization: Bearer" in refused.message or "token" in refused.message


def test_a_caller_outside_its_scopes_is_403_naming_the_scope() -> None:
    refused = refusal(f"Bearer {ATM_TOKEN}", CUSTOMERS_READ)
    assert (refused.status, refused.code, refused.scope) == (
        403,
        "insufficient_scope",
        CUSTOMERS_READ,
    )
    assert "OMNI_API_TOKENS" in refused.message
    assert 'scope="customers:read"' in refused.www_authenticate()


def test_every_callers_hash_is_compared_in_constant_time_even_after_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = auth_module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    callers = parse_api_tokens(
        json.dumps(
            {f"c{i}": {"sha256": sha(f"t{i}"), "scopes": [CUSTOMERS_READ]} for i in range(5)}
        )
    )
    authenticator = Authenticator(callers)
    assert authenticator.authenticate("Bearer t0").name == "c0"  # the first one matches
    assert len(compared) == 5  # and the other four are compared all the same
    assert all(a == token_sha256("t0") for a, _ in compared)
    compared.clear()
    with pytest.raises(AuthError):
        authenticator.authenticate("Bearer nobody")
    assert len(compared) == 5


def test_no_callers_is_no_api() -> None:
    with pytest.raises(ApiTokensError, match="OMNI_API_TOKENS"):
        Authenticator([])
    with pytest.raises(ApiTokensError, match="is not set"):
        create_api(Settings())


# --- keys: path parameters are escaped as the worker escapes ids ---------------------------


def test_a_customer_id_is_one_escaped_segment_of_every_key_read() -> None:
    assert customer_keys("a:b/c%d") == [
        "omni:profile:a%3Ab/c%25d",
        "omni:timeline:a%3Ab/c%25d",
        "omni:cart:a%3Ab/c%25d",
        "omni:offers:a%3Ab/c%25d",
        "omni:coupons:a%3Ab/c%25d",
        "omni:entitlement:a%3Ab/c%25d:overdraft",
    ]
    # An id cannot reach another customer's entitlement key.
    assert "omni:entitlement:x:overdraft" not in customer_keys("x:overdraft")


def test_an_identifier_key_escapes_the_value_and_knows_the_types() -> None:
    assert (
        identifier_read_key("msisdn", "+44:7700/900%") == "omni:identifier:msisdn:+44%3A7700/900%25"
    )
    assert identifier_read_key("passport", "X1") is None
    assert identifier_read_key("msisdn:x", "1") is None
    assert set(IDENTIFIER_TYPES) == {"msisdn", "email", "device_id", "card_token", "loyalty_id"}


# --- response shaping -----------------------------------------------------------------------


def _profile(**extra: Any) -> bytes:
    return orjson.dumps(
        {
            "customer_id": "c1",
            "marital_status": "married",
            "consents": {"sms:marketing": False, "email:marketing": True},
            "identifiers": {"msisdn": ["+447700900001"]},
            **extra,
        }
    )


def test_a_customer_is_her_keys_with_missing_ones_empty() -> None:
    view = customer_view("c1", [_profile(), None, None, None, None, None], NOW)
    assert view == {
        "customer_id": "c1",
        "profile": orjson.loads(_profile()),  # passed through, identifiers included
        "consents": {"sms:marketing": False, "email:marketing": True},
        "entitlements": {},
        "timeline": [],
        "cart": None,
        "coupons": [],
        "open_offers": {},
    }
    assert customer_view("c1", [None, b"[]", None, b"{}", b"[]", None], NOW) is None


def test_offers_and_coupons_that_closed_since_their_projection_are_shown_closed() -> None:
    offers = {
        "t1": {
            "offer_type": "a",
            "rule": "r",
            "channel": "sms",
            "expires_at": format_time(NOW + 60),
        },
        "t2": {
            "offer_type": "b",
            "rule": "r",
            "channel": "sms",
            "expires_at": format_time(NOW - 1),
        },
        "t3": {"offer_type": "c", "rule": "r", "channel": "sms", "expires_at": None},
    }
    coupons = [
        {"coupon_id": "K1", "status": "issued", "expires_at": format_time(NOW + 60)},
        {"coupon_id": "K2", "status": "issued", "expires_at": format_time(NOW - 60)},
        {"coupon_id": "K3", "status": "redeemed", "expires_at": format_time(NOW - 60)},
        {"coupon_id": "K4", "status": "issued", "expires_at": format_time(NOW - 31 * 86400)},
    ]
    overdraft = {"limit": 500, "currency": "EUR", "offer_id": "o", "expires_at": "x"}
    values = [
        _profile(),
        b'[{"at": "t", "channel": "atm", "type": "atm.withdrawal", "summary": "s"}]',
        b'{"cart_id": "k", "items": []}',
        orjson.dumps(offers),
        orjson.dumps(coupons),
        orjson.dumps(overdraft),
    ]
    view = customer_view("c1", values, NOW)
    assert view is not None
    assert list(view["open_offers"]) == ["t1", "t3"]
    assert [(c["coupon_id"], c["status"]) for c in view["coupons"]] == [
        ("K1", "issued"),
        ("K2", "expired"),
        ("K3", "redeemed"),
    ]
    assert view["entitlements"] == {"overdraft": overdraft}
    assert view["timeline"][0]["channel"] == "atm" and view["cart"]["cart_id"] == "k"


# --- routes, on aiohttp's test server over a dict --------------------------------------------


class DictRedis:
    """MGET, GET and PING over a dict; remembers the keys asked for."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data
        self.asked: list[list[str]] = []
        self.up = True

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self.asked.append(list(keys))
        return [self.data.get(k) for k in keys]

    async def get(self, key: str) -> bytes | None:
        self.asked.append([key])
        return self.data.get(key)

    async def ping(self) -> bool:
        if not self.up:
            raise ConnectionError("down")
        return True


def serve(
    redis: DictRedis, check: Callable[[TestClient[Any, Any]], Awaitable[None]], **settings: Any
) -> None:
    async def run() -> None:
        app = create_api(Settings(api_tokens=TOKENS, **settings), redis=redis)
        server = TestServer(app)
        await server.start_server(**RUNNER_OPTIONS)  # as omni api runs it
        async with TestClient(server) as client:
            await check(client)

    asyncio.run(run())


CC = {"Authorization": f"Bearer {CALLCENTER_TOKEN}"}
ATM = {"Authorization": f"Bearer {ATM_TOKEN}"}


def test_path_parameters_are_url_decoded_then_escaped(caplog: pytest.LogCaptureFixture) -> None:
    weird = "a:b/c%d"
    redis = DictRedis(
        {
            "omni:profile:a%3Ab/c%25d": _profile(customer_id=weird),
            "omni:identifier:email:x%3Ay/z%25@example.com": b'{"customer_id": "a:b/c%d"}',
        }
    )

    async def check(client: TestClient[Any, Any]) -> None:
        response = await client.get("/customers/a%3Ab%2Fc%25d", headers=CC)
        assert response.status == 200
        assert (await response.json())["customer_id"] == weird
        assert redis.asked[-1] == customer_keys(weird)  # one MGET of all her keys
        response = await client.get("/identifiers/email/x:y%2Fz%25@example.com", headers=ATM)
        assert response.status == 200
        assert await response.json() == {
            "type": "email",
            "value": "x:y/z%@example.com",
            "customer_id": weird,
        }
        assert (await client.get("/customers/a%3Ab/c%25d", headers=CC)).status == 404  # 2 segments

    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        serve(redis, check)
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert lines[0].startswith("GET /customers/{customer_id} 200 ")
    assert lines[1].startswith("GET /identifiers/{type}/{value} 200 ")
    assert lines[0].endswith("caller=callcenter") and lines[1].endswith("caller=atm")
    assert lines[2].startswith("GET <no route> 404 ")
    for text in (caplog.text, *lines):
        for secret in ("a:b", "a%3A", "c%d", "example.com", "x:y", CALLCENTER_TOKEN, ATM_TOKEN):
            assert secret not in text


def test_status_codes_and_error_bodies(caplog: pytest.LogCaptureFixture) -> None:
    redis = DictRedis({"omni:profile:c1": _profile()})

    async def check(client: TestClient[Any, Any]) -> None:
        async def expect(path: str, headers: dict[str, str], status: int, error: str) -> None:
            response = await client.get(path, headers=headers)
            assert response.status == status, path
            body = await response.json()
            assert body["error"] == error and len(body["message"]) > 20, body
            if status == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer ")

        await expect("/customers/c1", {}, 401, "unauthorized")
        await expect("/customers/c1", {"Authorization": "Bearer nope"}, 401, "invalid_token")
        await expect("/customers/c1", {"Authorization": "Token x"}, 401, "invalid_request")
        await expect("/customers/c1", ATM, 403, "insufficient_scope")
        await expect("/customers/nobody", CC, 404, "customer_not_found")
        await expect("/identifiers/msisdn/%2B4477", CC, 404, "identifier_not_found")
        await expect("/identifiers/passport/X1", CC, 400, "unknown_identifier_type")
        await expect("/identifiers/passport/X1", {}, 401, "unauthorized")  # auth comes first
        await expect("/nowhere", CC, 404, "no_such_route")
        response = await client.post("/customers/c1", headers=CC)
        assert response.status == 405 and (await response.json())["error"] == "method_not_allowed"
        # Unauthenticated: the probes and the document.
        assert (await client.get("/livez")).status == 200
        assert (await client.get("/readyz")).status == 200
        redis.up = False
        response = await client.get("/readyz")
        assert response.status == 503 and "OMNI_REDIS_URL" in (await response.json())["message"]
        assert (await client.get("/openapi.json")).status == 200

    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        serve(redis, check)
    assert "nobody" not in caplog.text and "4477" not in caplog.text
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert lines[3].startswith("GET /customers/{customer_id} 403 ")
    assert lines[3].endswith("caller=atm")  # a 403 names who was refused
    assert lines[0].endswith("caller=-")


def test_api_tokens_are_who_may_call_the_api() -> None:
    """The setting's behaviour: a token listed in api_tokens opens its routes, no other does."""
    redis = DictRedis({"omni:profile:c1": _profile()})
    only_atm = json.dumps({"atm": {"sha256": sha(ATM_TOKEN), "scopes": [CUSTOMERS_READ]}})

    async def check(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/customers/c1", headers=ATM)).status == 200
        assert (await client.get("/customers/c1", headers=CC)).status == 401

    async def run() -> None:
        app = create_api(Settings(api_tokens=only_atm), redis=redis)
        server = TestServer(app)
        await server.start_server(**RUNNER_OPTIONS)  # as omni api runs it
        async with TestClient(server) as client:
            await check(client)

    asyncio.run(run())


def test_a_redis_failure_is_503_and_logs_no_key(caplog: pytest.LogCaptureFixture) -> None:
    from redis.exceptions import NoPermissionError

    class Refusing(DictRedis):
        async def mget(self, keys: list[str]) -> list[bytes | None]:
            raise NoPermissionError(f"No permissions to access the '{keys[0]}' key")

    async def check(client: TestClient[Any, Any]) -> None:
        response = await client.get("/customers/secret-customer", headers=CC)
        assert response.status == 503
        assert (await response.json())["error"] == "read_model_unavailable"

    with caplog.at_level(logging.INFO):
        serve(Refusing({}), check)
    assert "NoPermissionError" in caplog.text and "secret-customer" not in caplog.text


# --- the OpenAPI document ----------------------------------------------------------------------


def test_the_openapi_document_describes_every_route_and_resolves() -> None:
    app = create_api(Settings(api_tokens=TOKENS), redis=DictRedis({}))
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    routes = {
        (r.resource.canonical, r.method.lower(), r.name)
        for r in app.router.routes()
        if r.resource is not None
    }
    assert {(path, method) for path, method, _ in routes} == {
        (path, method) for path, item in doc["paths"].items() for method in item
    }
    for path, method, name in routes:
        operation = doc["paths"][path][method]
        # Path parameters: exactly the template's.
        template_params = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        assert {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"} == (
            template_params
        )
        scope = ROUTE_SCOPES.get(name or "")
        if scope is None:
            assert operation["security"] == []
        else:
            assert operation["security"] == [{"bearer": [scope]}]
            assert {"200", "401", "403", "404"} <= set(operation["responses"])
        assert "200" in operation["responses"]
    assert set(ROUTE_SCOPES.values()) == set(SCOPES)

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict)
    ops = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ops) == len(set(ops))


def test_the_served_document_is_the_module_s() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        response = await client.get("/openapi.json")
        assert await response.json() == openapi_document()

    serve(DictRedis({}), check)
