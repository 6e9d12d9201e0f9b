"""The model-reply cache: one table (agent_llm_cache) beside the checkpoints, one class per backend.

Each cache has get/put and the async aget/aput; values are JSON objects, keys are request hashes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

_GET = "SELECT value FROM agent_llm_cache WHERE key = {p}"
_FORGET = "DELETE FROM agent_llm_cache WHERE thread_id = {p}"
# The first reply stored for a request is kept: replays must see what the original run saw.
_PUT = ("INSERT INTO agent_llm_cache (key, model, thread_id, value) VALUES ({p}, {p}, {p}, {p}) "
        "ON CONFLICT (key) DO NOTHING")


def _decode(row: Any) -> dict | None:
    if row is None:
        return None
    value = row["value"] if isinstance(row, dict) else row[0]
    return json.loads(value)


def _params(key: str, model: str, thread_id: str | None, value: dict) -> tuple:
    return key, model, thread_id, json.dumps(value, sort_keys=True)


class MemoryCache:
    """For memory://: a dict, gone with the process like the checkpoints."""

    def __init__(self) -> None:
        self._values: dict[str, dict] = {}
        self._owners: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._values.get(key)

    def put(self, key: str, model: str, thread_id: str | None, value: dict) -> None:
        with self._lock:
            if key not in self._values:
                self._values[key] = value
                self._owners[key] = thread_id

    def forget(self, thread_id: str) -> None:
        """Drop the replies the thread paid for (when the thread is deleted)."""
        with self._lock:
            for key in [k for k, owner in self._owners.items() if owner == thread_id]:
                del self._values[key], self._owners[key]

    async def aget(self, key: str) -> dict | None:
        return self.get(key)

    async def aput(self, key: str, model: str, thread_id: str | None, value: dict) -> None:
        self.put(key, model, thread_id, value)

    async def aforget(self, thread_id: str) -> None:
        self.forget(thread_id)


class SqliteCache:
    """Shares the saver's connection and lock, so it is as thread-safe as the saver."""

    def __init__(self, conn, lock: threading.Lock) -> None:
        self.conn, self.lock = conn, lock

    def get(self, key: str) -> dict | None:
        with self.lock:
            return _decode(self.conn.execute(_GET.format(p="?"), (key,)).fetchone())

    def put(self, key: str, model: str, thread_id: str | None, value: dict) -> None:
        with self.lock:
            self.conn.execute(_PUT.format(p="?"), _params(key, model, thread_id, value))
            self.conn.commit()

    def forget(self, thread_id: str) -> None:
        with self.lock:
            self.conn.execute(_FORGET.format(p="?"), (thread_id,))
            self.conn.commit()


class AsyncSqliteCache:
    def __init__(self, conn, lock: asyncio.Lock) -> None:
        self.conn, self.lock = conn, lock

    async def aget(self, key: str) -> dict | None:
        async with self.lock:
            async with self.conn.execute(_GET.format(p="?"), (key,)) as cur:
                return _decode(await cur.fetchone())

    async def aput(self, key: str, model: str, thread_id: str | None, value: dict) -> None:
        async with self.lock:
            await self.conn.execute(_PUT.format(p="?"), _params(key, model, thread_id, value))
            await self.conn.commit()

    async def aforget(self, thread_id: str) -> None:
        async with self.lock:
            await self.conn.execute(_FORGET.format(p="?"), (thread_id,))
            await self.conn.commit()


class PostgresCache:
    """Takes connections from the saver's pool (autocommit)."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def get(self, key: str) -> dict | None:
        with self.pool.connection() as conn:
            return _decode(conn.execute(_GET.format(p="%s"), (key,)).fetchone())

    def put(self, key: str, model: str, thread_id: str | None, value: dict) -> None:
        with self.pool.connection() as conn:
            conn.execute(_PUT.format(p="%s"), _params(key, model, thread_id, value))

    def forget(self, thread_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(_FORGET.format(p="%s"), (thread_id,))


class AsyncPostgresCache:
    def __init__(self, pool) -> None:
        self.pool = pool

    async def aget(self, key: str) -> dict | None:
        async with self.pool.connection() as conn:
            return _decode(await (await conn.execute(_GET.format(p="%s"), (key,))).fetchone())

    async def aput(self, key: str, model: str, thread_id: str | None, value: dict) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_PUT.format(p="%s"), _params(key, model, thread_id, value))

    async def aforget(self, thread_id: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_FORGET.format(p="%s"), (thread_id,))
