"""The API's OpenAPI 3.1 description, written by hand (served at ``/openapi.json``).

A unit test checks that every route of ``create_api`` is described here with its
method, parameters and status codes, and that every ``$ref`` resolves.
"""

from __future__ import annotations

from typing import Any

from processors.api.auth import CUSTOMERS_READ, IDENTIFIERS_READ
from processors.api.views import IDENTIFIER_TYPES

__all__ = ["openapi_document"]


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_AUTH_ERRORS = {
    "401": {
        **_error_response(
            "No, malformed or unknown bearer token (header WWW-Authenticate: Bearer ...)"
        ),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    "403": _error_response("The caller's token lacks the route's scope"),
    "503": _error_response("Redis did not answer: retry later"),
}

_ID_NOTE = (
    "URL-encoded: a '/' in the id is sent as %2F, '%' as %25; ':' and any other character "
    "are fine. The API escapes it into the Redis key as the worker does (README 'Redis keys')."
)


def openapi_document() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Omnichannel Customer 360 API",
            "version": "1",
            "description": "Read-only view of the Redis read model the pipeline writes: a "
            "customer's profile, consents, entitlements, timeline, cart, coupons and open "
            "offers, and which customer an identifier resolves to. Every error body is "
            '{"error": <code>, "message": <what to do>}.',
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token whose SHA-256 is in OMNI_API_TOKENS, with its "
                    f"scopes ({CUSTOMERS_READ}, {IDENTIFIERS_READ}).",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "description": "a stable code"},
                        "message": {"type": "string", "description": "what was wrong, what to do"},
                    },
                },
                "Customer": {
                    "type": "object",
                    "required": [
                        "customer_id",
                        "profile",
                        "consents",
                        "entitlements",
                        "timeline",
                        "cart",
                        "coupons",
                        "open_offers",
                    ],
                    "properties": {
                        "customer_id": {"type": "string"},
                        "profile": {
                            "type": "object",
                            "description": "omni:profile:<id> as the worker wrote it: traits, "
                            "products, consents, last_seen, last_country, updated_at, "
                            "identifiers ({type: [values]})",
                        },
                        "consents": {
                            "type": "object",
                            "additionalProperties": {"type": "boolean"},
                            "description": "'<channel>:<purpose>' -> granted (from the profile)",
                        },
                        "entitlements": {
                            "type": "object",
                            "description": "kind (overdraft) -> {limit, currency, offer_id, "
                            "expires_at}; only entitlements in force",
                        },
                        "timeline": {
                            "type": "array",
                            "items": {"type": "object"},
                            "description": "recent interactions, newest first: at, channel, "
                            "type, summary",
                        },
                        "cart": {"type": ["object", "null"]},
                        "coupons": {
                            "type": "array",
                            "items": {"type": "object"},
                            "description": "coupon records: coupon_id, status (issued, "
                            "redeemed, expired), value, currency, expires_at, redeemed_at, "
                            "redeemed_channel",
                        },
                        "open_offers": {
                            "type": "object",
                            "additionalProperties": {"$ref": "#/components/schemas/Offer"},
                            "description": "trigger_id -> the offer sent and not yet answered",
                        },
                    },
                },
                "Offer": {
                    "type": "object",
                    "properties": {
                        "offer_type": {"type": "string"},
                        "rule": {"type": "string"},
                        "channel": {"type": "string"},
                        "expires_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
                "IdentifierLink": {
                    "type": "object",
                    "required": ["type", "value", "customer_id"],
                    "properties": {
                        "type": {"type": "string", "enum": list(IDENTIFIER_TYPES)},
                        "value": {"type": "string"},
                        "customer_id": {"type": "string"},
                        "anonymous": {
                            "type": "boolean",
                            "description": "true: the identifier resolves to its anonymous "
                            "profile anon:<type>:<value> (no customer has claimed it yet)",
                        },
                        "source": {
                            "type": ["string", "null"],
                            "enum": ["learned", "crm", None],
                            "description": "learned (an event carried both) or crm "
                            "(identity.linked); null for an anonymous profile",
                        },
                        "linked_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}},
                },
            },
        },
        "paths": {
            "/customers/{customer_id}": {
                "get": {
                    "operationId": "getCustomer",
                    "summary": "A customer's 360 view (one Redis MGET)",
                    "security": [{"bearer": [CUSTOMERS_READ]}],
                    "parameters": [
                        {
                            "name": "customer_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": _ID_NOTE,
                        }
                    ],
                    "responses": {
                        "200": _json_response("The customer", "Customer"),
                        **_AUTH_ERRORS,
                        "404": _error_response("No profile for this id (unknown or erased)"),
                    },
                }
            },
            "/identifiers/{type}/{value}": {
                "get": {
                    "operationId": "getIdentifier",
                    "summary": "The customer an identifier resolves to",
                    "security": [{"bearer": [IDENTIFIERS_READ]}],
                    "parameters": [
                        {
                            "name": "type",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": list(IDENTIFIER_TYPES)},
                        },
                        {
                            "name": "value",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": _ID_NOTE,
                        },
                    ],
                    "responses": {
                        "200": _json_response("The link", "IdentifierLink"),
                        "400": _error_response("Unknown identifier type"),
                        **_AUTH_ERRORS,
                        "404": _error_response("The identifier is linked to no customer"),
                    },
                }
            },
            "/livez": {
                "get": {
                    "operationId": "livez",
                    "summary": "The process answers (no auth)",
                    "security": [],
                    "responses": {"200": _json_response("Alive", "Status")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Redis answers PING (no auth)",
                    "security": [],
                    "responses": {
                        "200": _json_response("Ready", "Status"),
                        "503": _error_response("Redis did not answer"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document (no auth)",
                    "security": [],
                    "responses": {"200": {"description": "The OpenAPI document"}},
                }
            },
        },
    }
