"""The Customer 360 API: a read-only HTTP API over the Redis read model (aiohttp).

``create_api(settings)`` builds the application; ``omni api`` (processors/tools/cli.py)
runs it with :func:`run_api`. Routes, auth, status codes: README "Customer 360 API" and
the OpenAPI document served at ``/openapi.json`` (processors/api/openapi.py).

Access log policy: one line per request on the ``omni.api.access`` logger with the
method, the route *template* (``/customers/{customer_id}``), the status, the duration
and the caller's name; never the path itself (it holds customer ids and identifier
values), a query string, a header or a token. aiohttp's own access log (which logs
the path) is off. Errors are logged by exception class, never by message: a Redis
NOPERM error names the key, so the id.
"""

from __future__ import annotations

import gc
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from processors.api.auth import (
    CUSTOMERS_READ,
    IDENTIFIERS_READ,
    Authenticator,
    AuthError,
    parse_api_tokens,
    require_scope,
)
from processors.api.openapi import openapi_document
from processors.api.views import (
    IDENTIFIER_TYPES,
    customer_keys,
    customer_view,
    identifier_read_key,
    identifier_view,
)
from processors.settings import Settings

__all__ = ["ACCESS_LOGGER", "REDIS_KEY", "ROUTE_SCOPES", "RUNNER_OPTIONS", "create_api", "run_api"]

log = logging.getLogger("omni.api")
#: The access log's logger: one line per request, no ids (module docstring).
ACCESS_LOGGER = "omni.api.access"
access_log = logging.getLogger(ACCESS_LOGGER)

#: The application's Redis client (redis.asyncio.Redis, or a stand-in in unit tests).
REDIS_KEY: web.AppKey[Any] = web.AppKey("redis", object)
_AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("authenticator", Authenticator)

#: Redis connections of one API process (one event loop: a few keep Redis busy; more only
#: cost Redis memory), and how long a request waits for a free one before its 503.
REDIS_CONNECTIONS = 16
REDIS_WAIT_SECONDS = 2.0

#: Route name -> the scope a caller needs; a route not listed is public (health, the doc).
ROUTE_SCOPES: dict[str, str] = {"customer": CUSTOMERS_READ, "identifier": IDENTIFIERS_READ}

#: How the application is run (aiohttp's AppRunner options): aiohttp's own access log
#: writes the path, so ids: it is off, the middleware writes ours.
RUNNER_OPTIONS: dict[str, Any] = {"access_log": None}

_JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON, headers=headers)


def _error(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An error body: what was wrong (``error``, a stable code) and what to do (``message``)."""
    return _json(status, {"error": error, "message": message}, headers)


_HTTP_ERRORS = {
    404: (
        "no_such_route",
        "no such route: GET /customers/{customer_id} or GET /identifiers/{type}/{value}, "
        "with '/' in an id sent as %2F (GET /openapi.json describes them)",
    ),
    405: ("method_not_allowed", "the API is read-only: use GET"),
}


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "<no route>" if resource is None else resource.canonical


@web.middleware
async def _access_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth for the routes that need it, errors as JSON, then the access log line."""
    started = time.perf_counter()
    caller = "-"
    response: web.StreamResponse
    try:
        scope = ROUTE_SCOPES.get(request.match_info.route.name or "")
        if scope is not None:
            who = request.app[_AUTH_KEY].authenticate(request.headers.get("Authorization"))
            caller = who.name  # logged for a 403 too
            require_scope(who, scope)
        response = await handler(request)
    except AuthError as refused:
        error = refused.code or "unauthorized"
        response = _error(
            refused.status, error, refused.message, {"WWW-Authenticate": refused.www_authenticate()}
        )
    except web.HTTPException as http:  # no such route, another method than GET
        error, message = _HTTP_ERRORS.get(http.status, ("http_error", http.reason))
        response = _error(
            http.status, error, message, {"Allow": "GET"} if http.status == 405 else None
        )
    except RedisError as down:
        log.warning("Redis read failed: %s", type(down).__name__)  # the message may name a key
        response = _error(
            503,
            "read_model_unavailable",
            "the read model (Redis) did not answer: retry in a few seconds; if it persists, "
            "the API's operator should check /readyz and the Redis settings",
        )
    except Exception as failed:
        # Where, not what: an exception's message may hold an id.
        log.error(
            "unexpected %s:\n%s",
            type(failed).__name__,
            "".join(traceback.format_tb(failed.__traceback__)),
        )
        response = _error(
            500, "internal_error", "the API failed on this request: retry; report it if it persists"
        )
    access_log.info(
        "%s %s %d %.2fms caller=%s",
        request.method,
        _route_template(request),
        response.status,
        (time.perf_counter() - started) * 1000,
        caller,
    )
    return response


async def _customer(request: web.Request) -> web.Response:
    customer_id = request.match_info["customer_id"]
    values = await request.app[REDIS_KEY].mget(customer_keys(customer_id))
    view = customer_view(customer_id, values, time.time())
    if view is None:
        return _error(
            404,
            "customer_not_found",
            "no profile for this customer id in the read model: check the id (URL-encode it, "
            "'/' as %2F); a customer appears once the pipeline has seen one of her events, "
            "and is gone after an erasure",
        )
    return _json(200, view)


async def _identifier(request: web.Request) -> web.Response:
    identifier_type, value = request.match_info["type"], request.match_info["value"]
    key = identifier_read_key(identifier_type, value)
    if key is None:
        return _error(
            400,
            "unknown_identifier_type",
            f"unknown identifier type: use one of {', '.join(IDENTIFIER_TYPES)}",
        )
    raw = await request.app[REDIS_KEY].get(key)
    if raw is None:
        return _error(
            404,
            "identifier_not_found",
            "this identifier is linked to no customer: check the type and the value (URL-encode "
            "it, '/' as %2F); an identifier is linked once an event carrying it was processed",
        )
    return _json(200, identifier_view(identifier_type, value, raw))


async def _livez(request: web.Request) -> web.Response:
    return _json(200, {"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    try:
        await request.app[REDIS_KEY].ping()
    except (RedisError, OSError) as down:
        return _error(
            503,
            "read_model_unavailable",
            f"Redis did not answer PING ({type(down).__name__}): check OMNI_REDIS_URL, "
            "OMNI_REDIS_CA_FILE and that Redis runs",
        )
    return _json(200, {"status": "ready"})


_DOC = orjson.dumps(openapi_document())


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=_DOC, content_type=_JSON)


def create_api(settings: Settings, redis: Any = None) -> web.Application:
    """The API's application. ``redis``: a client to use instead of one built from the
    settings (tests); the settings' one (URL, ACL user, TLS CA) is opened at startup and
    closed at cleanup.

    Raises ApiTokensError when OMNI_API_TOKENS declares no caller: never an open API.
    """
    secret = settings.api_tokens
    authenticator = Authenticator(
        parse_api_tokens(None if secret is None else secret.get_secret_value())
    )
    app = web.Application(middlewares=[_access_and_auth])
    app[_AUTH_KEY] = authenticator
    app.router.add_get("/customers/{customer_id}", _customer, name="customer", allow_head=False)
    app.router.add_get(
        "/identifiers/{type}/{value}", _identifier, name="identifier", allow_head=False
    )
    app.router.add_get("/livez", _livez, name="livez", allow_head=False)
    app.router.add_get("/readyz", _readyz, name="readyz", allow_head=False)
    app.router.add_get("/openapi.json", _openapi, name="openapi", allow_head=False)

    if redis is not None:
        app[REDIS_KEY] = redis
    else:

        async def redis_client(app: web.Application) -> AsyncIterator[None]:
            from redis.asyncio import BlockingConnectionPool, Redis

            # A bounded pool that waits for a free connection: a burst queues here for
            # a moment instead of opening a connection per request in flight (redis-py's
            # default pool refuses past its limit: MaxConnectionsError, a 503).
            pool = BlockingConnectionPool.from_url(
                settings.redis_url.get_secret_value(),
                max_connections=REDIS_CONNECTIONS,
                timeout=REDIS_WAIT_SECONDS,
                **settings.redis_client_options(),
            )
            client = Redis.from_pool(pool)  # closes the pool with the client
            app[REDIS_KEY] = client
            yield
            await client.aclose()

        app.cleanup_ctx.append(redis_client)
    return app


def run_api(settings: Settings) -> None:
    """Serve the API on ``OMNI_API_HOST:OMNI_API_PORT`` until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_api(settings)

    async def freeze_startup_objects(app: web.Application) -> None:
        # Everything loaded so far (settings, the rule engine's grammar, aiohttp) lives as
        # long as the process: out of the collector's sight, a full collection no longer
        # walks it, so its pauses stay short (they delay every request in flight).
        gc.collect()
        gc.freeze()

    app.on_startup.append(freeze_startup_objects)
    log.info("Customer 360 API on http://%s:%d", settings.api_host, settings.api_port)
    web.run_app(
        app,
        host=settings.api_host,
        port=settings.api_port,
        **RUNNER_OPTIONS,
        print=None,
        handle_signals=True,
    )
