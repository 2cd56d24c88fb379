"""Coupon claims (S7): the till's side, a Redis ``SET NX`` before handing over the goods.

Part of the contract package because tills call it without the worker; the claim
key and the worker's ``omni:coupon:<id>`` record it guards are both built by
:mod:`producers.keys` (ids percent-encoded, so no coupon id reaches another's key).
Needs a Redis client: ``pip install "./contract[claims]"``.
"""

from __future__ import annotations

from typing import Any

from producers.keys import KEY_PREFIX, coupon_claim_key

__all__ = ["KEY_PREFIX", "CouponClaims", "coupon_claim_key"]


class CouponClaims:
    """The till's side of S7: claim a coupon atomically before handing over the goods.

    A till cannot wait for the stream, so the first ``claim`` of a coupon on any
    channel wins at once (Redis ``SET NX`` on ``omni:coupon:<id>:claim``, expiring
    with the coupon) and every later claim is refused. Then publish
    ``coupon.redeemed``; the pipeline reconciles (a second redemption that slipped
    through yields ``coupon_redemption_refused`` and the first one stands).
    """

    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    @classmethod
    def from_settings(cls, settings: Any) -> CouponClaims:
        """Connected as ``settings.redis_url`` says (the till's user; ``rediss://`` with
        ``redis_ca_file`` for TLS): a ``ProducerSettings`` or the worker's ``Settings``."""
        return cls(settings.redis_client())

    def claim(self, coupon_id: str, channel: str, valid_seconds: float) -> bool:
        """True for the first claim of ``coupon_id``; False when it was already claimed."""
        return bool(
            self._redis.set(
                coupon_claim_key(coupon_id),
                channel,
                nx=True,
                ex=max(1, int(valid_seconds)),
            )
        )

    def claimed_by(self, coupon_id: str) -> str | None:
        value = self._redis.get(coupon_claim_key(coupon_id))
        return None if value is None else value.decode()
