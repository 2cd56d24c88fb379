"""A stand-in for the part of ``redis.asyncio.Redis`` that :class:`ReadModelWriter` uses
(``pipeline()`` and ``aclose()``), for unit tests of the projection logic only.

Integration tests use the real Redis; this fake can be told to fail or hang the next
pipelines, which a real server cannot do on cue.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError


class FakePipeline:
    def __init__(self, server: FakeRedis) -> None:
        self.server = server
        self.queued: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def mset(self, mapping: dict[str, bytes]) -> None:
        self.queued.append(("mset", dict(mapping)))

    def set(self, key: str, value: bytes, pxat: int | None = None) -> None:
        self.queued.append(("set", key, value, pxat))

    def hset(self, key: str, field: str, value: bytes) -> None:
        self.queued.append(("hset", key, field, value))

    def delete(self, key: str) -> None:
        self.queued.append(("delete", key))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        server = self.server
        server.attempts += 1
        if server.hang > 0:
            server.hang -= 1
            await asyncio.Event().wait()  # never answers: only a timeout ends this
        if server.failures > 0:
            server.failures -= 1
            raise RedisConnectionError(
                "Error 111 connecting to 127.0.0.1:6379. Connection refused."
            )
        for command in self.queued:
            name = command[0]
            if name == "mset":
                server.data.update(command[1])
            elif name == "set":
                server.data[command[1]] = command[2]
                if command[3] is not None:
                    server.expiry[command[1]] = command[3]
            elif name == "hset":
                server.hashes.setdefault(command[1], {})[command[2]] = command[3]
            else:
                server.data.pop(command[1], None)
        server.pipelines.append([command[0] for command in self.queued])
        return [True] * len(self.queued)


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.hashes: dict[str, dict[str, bytes]] = {}
        #: key -> PXAT (ms) of the SETs that had one.
        self.expiry: dict[str, int] = {}
        #: The command names of each pipeline that succeeded, in order.
        self.pipelines: list[list[str]] = []
        #: Pipelines executed, including the failed ones.
        self.attempts = 0
        #: The next this-many pipelines raise a connection error.
        self.failures = 0
        #: The next this-many pipelines never answer.
        self.hang = 0
        self.closed = False

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    async def aclose(self) -> None:
        self.closed = True
