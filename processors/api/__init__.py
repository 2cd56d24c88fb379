"""The Customer 360 API: read-only HTTP over the Redis read model (``omni api``)."""

from processors.api.app import create_api, run_api
from processors.api.auth import ApiTokensError

__all__ = ["ApiTokensError", "create_api", "run_api"]
