"""The Customer 360 API as `omni api` runs it (a subprocess) on the real Redis.

The read model is written by the worker's own code (``project`` and ``queue_writes``);
the identifier links as the identity step will write them. Every status of both routes,
ids with ``:``, ``%`` and ``/``, the access log (no id, no token), and the ``omni-api``
ACL user on a secured Redis.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis

from devstack.ports import free_port
from devstack.provision import Provided
from devstack.redis import API_USER, WORKER_USER, LocalRedis
from processors.domain.model import CustomerState, format_time
from processors.domain.read_model import project
from processors.projection import queue_writes
from processors.settings import Settings
from producers.keys import identifier_key, timeline_key
from tests.integration.harness import ROOT, wait_for

pytestmark = pytest.mark.integration

CC_TOKEN = f"cc-{uuid.uuid4().hex}"
ATM_TOKEN = f"atm-{uuid.uuid4().hex}"
TOKENS = json.dumps(
    {
        "callcenter": {
            "sha256": hashlib.sha256(CC_TOKEN.encode()).hexdigest(),
            "scopes": ["customers:read", "identifiers:read"],
        },
        "atm": {
            "sha256": hashlib.sha256(ATM_TOKEN.encode()).hexdigest(),
            "scopes": ["identifiers:read"],
        },
    }
)


class ApiProcess:
    """``omni api`` as a real subprocess; its stderr (logs) in a file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings, self.log_path = settings, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{settings.api_port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "processors.tools.cli", "api"],
                cwd=ROOT,
                env=self.settings.as_env(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self.get("/readyz")[0] == 200 or None, 30, "omni api to be ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)

    def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, Any], Any]:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"omni api exited:\n{self.log()}")
        request = urllib.request.Request(self.base + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=5) as response:
                return response.status, dict(response.headers), orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), orjson.loads(error.read())
        except OSError:
            return 0, {}, None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def api_settings(redis_url: str, **overrides: Any) -> Settings:
    return Settings(
        redis_url=redis_url,
        api_host="127.0.0.1",
        api_port=free_port(),
        api_tokens=TOKENS,
        **overrides,
    )


@pytest.fixture
def api(redis_service: Provided, tmp_path: Path) -> Iterator[ApiProcess]:
    process = ApiProcess(api_settings(redis_service.address), tmp_path / "api.log")
    process.start()
    yield process
    process.stop()


def a_customer(customer_id: str, now: float) -> CustomerState:
    state = CustomerState.new(customer_id)
    state.traits = {"marital_status": "married", "language": "en"}
    state.products = ["current_account"]
    state.consents = {"sms:marketing": {"granted": False, "at": now - 100}}
    state.last_seen = {"atm": now - 60}
    state.updated_at = now - 60
    state.entitlements = {
        "overdraft": {
            "limit": 500,
            "currency": "EUR",
            "offer_id": "od-1",
            "expires_at": now + 3600,
        }
    }
    state.offers = {
        "trg-1": {
            "offer_type": "roaming_pack",
            "rule": "roaming_offer",
            "channel": "sms",
            "expires_at": now + 600,
            "value": 5.0,
        }
    }
    state.coupons = {
        f"CPN/{customer_id}": {
            "value": 10,
            "currency": "EUR",
            "expires_at": now + 86400,
            "status": "issued",
            "issued_channel": "tv",
            "redeemed_at": None,
            "redeemed_channel": None,
        }
    }
    return state


def write_customer(client: redis.Redis, state: CustomerState, now: float) -> None:
    pipe = client.pipeline(transaction=False)
    queue_writes(pipe, project(state, now))
    timeline = [{"at": format_time(now - 60), "channel": "atm", "type": "atm.withdrawal"}]
    pipe.set(timeline_key(state.customer_id), orjson.dumps(timeline))
    pipe.execute()


def path_of(customer_id: str) -> str:
    return "/customers/" + quote(customer_id, safe="")


def test_a_customer_and_an_identifier_with_colon_percent_and_slash(api: ApiProcess) -> None:
    client = redis.Redis.from_url(api.settings.redis_url.get_secret_value())
    now = time.time()
    tag = uuid.uuid4().hex[:8]
    ids = [f"c:{tag}", f"50%{tag}", f"a/{tag}", f"x:{tag}%2F/é"]
    for customer_id in ids:
        write_customer(client, a_customer(customer_id, now), now)
    # A customer whose id is another's id plus ":overdraft" etc. never reads hers.
    email = f"Jane:{tag}/50%@example.com"
    link = {
        "customer_id": ids[0],
        "anonymous": False,
        "source": "learned",
        "linked_at": format_time(now),
    }
    client.set(identifier_key("email", email), orjson.dumps(link))

    for customer_id in ids:
        status, headers, body = api.get(path_of(customer_id), CC_TOKEN)
        assert status == 200, (customer_id, body)
        assert headers["Content-Type"].startswith("application/json")
        assert body["customer_id"] == customer_id == body["profile"]["customer_id"]
        assert body["consents"] == {"sms:marketing": False}
        assert body["entitlements"]["overdraft"]["limit"] == 500
        assert body["timeline"][0]["channel"] == "atm"
        assert body["cart"] is None
        assert [c["coupon_id"] for c in body["coupons"]] == [f"CPN/{customer_id}"]
        assert body["open_offers"] == {
            "trg-1": {
                "offer_type": "roaming_pack",
                "rule": "roaming_offer",
                "channel": "sms",
                "expires_at": format_time(now + 600),
            }
        }

    status, _, body = api.get(f"/identifiers/email/{quote(email, safe='')}", ATM_TOKEN)
    assert status == 200
    assert body == {"type": "email", "value": email, **link}


def test_every_status_of_both_routes(api: ApiProcess) -> None:
    client = redis.Redis.from_url(api.settings.redis_url.get_secret_value())
    now, tag = time.time(), uuid.uuid4().hex[:8]
    known = f"k:{tag}"
    write_customer(client, a_customer(known, now), now)
    client.set(identifier_key("msisdn", f"+44{tag}"), orjson.dumps({"customer_id": known}))

    cases = [
        (path_of(known), None, 401, "unauthorized"),
        (path_of(known), "not-a-token", 401, "invalid_token"),
        (path_of(known), ATM_TOKEN, 403, "insufficient_scope"),
        (path_of(f"nobody-{tag}"), CC_TOKEN, 404, "customer_not_found"),
        (f"/identifiers/msisdn/%2B44{tag}", None, 401, "unauthorized"),
        (f"/identifiers/msisdn/%2B00{tag}", ATM_TOKEN, 404, "identifier_not_found"),
        (f"/identifiers/passport/{tag}", ATM_TOKEN, 400, "unknown_identifier_type"),
    ]
    for path, token, status, error in cases:
        got, headers, body = api.get(path, token)
        assert (got, body["error"]) == (status, error), path
        assert body["message"]
        if status == 401:
            assert headers["WWW-Authenticate"].startswith('Bearer realm="omni-api"')
    assert api.get(f"/identifiers/msisdn/%2B44{tag}", ATM_TOKEN)[2]["customer_id"] == known
    assert api.get("/livez")[0] == 200 and api.get("/readyz")[0] == 200
    assert api.get("/openapi.json")[2]["openapi"].startswith("3.")


def test_the_access_log_names_routes_and_callers_never_ids_or_tokens(api: ApiProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    secret_id, secret_value = f"secret-customer-{tag}", f"secret-msisdn-{tag}"
    api.get(path_of(secret_id), CC_TOKEN)
    api.get(path_of(secret_id), ATM_TOKEN)
    api.get(f"/identifiers/msisdn/{secret_value}", ATM_TOKEN)
    api.get(f"/identifiers/msisdn/{secret_value}?q={secret_value}", "wrong-token")

    def logged() -> list[str] | None:
        lines = [line for line in api.log().splitlines() if "omni.api.access" in line]
        return lines if len(lines) >= 4 else None

    lines = wait_for(logged, 5, "four access log lines")
    assert " GET /customers/{customer_id} 404 " in lines[-4] and lines[-4].endswith(
        "caller=callcenter"
    )
    assert " GET /customers/{customer_id} 403 " in lines[-3] and lines[-3].endswith("caller=atm")
    assert " GET /identifiers/{type}/{value} 404 " in lines[-2]
    assert " GET /identifiers/{type}/{value} 401 " in lines[-1] and lines[-1].endswith("caller=-")
    text = api.log()
    for secret in (tag, CC_TOKEN, ATM_TOKEN, "wrong-token"):
        assert secret not in text


def test_omni_api_refuses_to_start_without_callers(redis_service: Provided) -> None:
    settings = api_settings(redis_service.address)
    env = {k: v for k, v in settings.as_env(os.environ).items() if k != "OMNI_API_TOKENS"}
    done = subprocess.run(
        [sys.executable, "-m", "processors.tools.cli", "api"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and "OMNI_API_TOKENS" in done.stderr


def test_the_api_reads_as_the_omni_api_acl_user_over_tls(tmp_path: Path) -> None:
    with LocalRedis(free_port(), tmp_path / "redis", secure=True) as server:
        assert server.ca_file is not None
        worker = redis.Redis.from_url(
            server.url_for(WORKER_USER.role), ssl_ca_certs=str(server.ca_file)
        )
        now, customer = time.time(), f"acl:{uuid.uuid4().hex[:8]}"
        write_customer(worker, a_customer(customer, now), now)
        reader = redis.Redis.from_url(
            server.url_for(API_USER.role), ssl_ca_certs=str(server.ca_file)
        )
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.set("omni:profile:x", b"{}")
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.hgetall("omni:stats:x")  # only GET and MGET

        settings = api_settings(server.url_for(API_USER.role), redis_ca_file=str(server.ca_file))
        api = ApiProcess(settings, tmp_path / "api.log")
        api.start()
        try:
            status, _, body = api.get(path_of(customer), CC_TOKEN)
            assert status == 200 and body["customer_id"] == customer
        finally:
            api.stop()
