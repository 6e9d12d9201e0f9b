"""The model-reply cache: one table (agent_llm_cache) beside the checkpoints, one class per backend.

Each cache has get/put and the async aget/aput; values are JSON objects, keys are request hashes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from savers.compact import as_text, context, from_text, seal, unseal

_GET = "SELECT value FROM agent_llm_cache WHERE key = {p}"
_FORGET = "DELETE FROM agent_llm_cache WHERE thread_id = {p}"
# The first reply stored for a request is kept: replays must see what the original run saw.
_PUT = ("INSERT INTO agent_llm_cache (key, model, thread_id, value) VALUES ({p}, {p}, {p}, {p}) "
        "ON CONFLICT (key) DO NOTHING")


# A reply stored under a serializer that compresses or encrypts (savers.serde): this prefix, its type, then
# base64 of its bytes. A plain reply is a JSON object, so it starts with "{".
SEALED_PREFIX = "~"


def _decode(row: Any, serde=None, key: str = "") -> dict | None:
    """A stored reply; sealed ones are bound to their cache key (copied under another key, they fail), and
    where encryption is on a plain one is refused, as any plaintext row is."""
    if row is None:
        return None
    value = row["value"] if isinstance(row, dict) else row[0]
    stored = from_text(value[len(SEALED_PREFIX):]) if value.startswith(SEALED_PREFIX) else ("json", value.encode())
    return json.loads(unseal(serde, *stored, context("reply", key))[1])


def _params(key: str, model: str, thread_id: str | None, value: dict, serde=None) -> tuple:
    text = json.dumps(value, sort_keys=True)
    type_, data = seal(serde, "json", text.encode(), context("reply", key))
    return key, model, thread_id, text if type_ == "json" else SEALED_PREFIX + as_text(type_, data)


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


class _Sealed:
    """The saver's serializer, read at each use (the saver learns it from its database after it is built)."""

    saver: Any = None

    @property
    def serde(self) -> Any:
        return getattr(self.saver, "serde", None)


def in_aiosqlite_thread(conn, fn, *args) -> Any:
    """fn(the sqlite3 connection, *args) on an aiosqlite connection's thread, in one hop through its queue (an
    awaitable): its public API takes a hop per statement and one more per cursor, each hop two thread
    wake-ups. Used by the async SQLite saver and this cache."""
    return conn._execute(fn, conn._conn, *args)


def _get(conn, key: str):
    return conn.execute(_GET.format(p="?"), (key,)).fetchone()


def _execute(conn, sql: str, params) -> None:
    conn.execute(sql, params)  # the saver's connection is in autocommit mode: this commits


class SqliteCache(_Sealed):
    """Shares the saver's connection and lock, so it is as thread-safe as the saver."""

    def __init__(self, conn, lock: threading.Lock, saver=None) -> None:
        self.conn, self.lock, self.saver = conn, lock, saver

    def get(self, key: str) -> dict | None:
        with self.lock:
            return _decode(_get(self.conn, key), self.serde, key)

    def put(self, key: str, model: str, thread_id: str | None, value: dict) -> None:
        with self.lock:
            _execute(self.conn, _PUT.format(p="?"), _params(key, model, thread_id, value, self.serde))

    def forget(self, thread_id: str) -> None:
        with self.lock:
            _execute(self.conn, _FORGET.format(p="?"), (thread_id,))


class AsyncSqliteCache(_Sealed):
    def __init__(self, conn, lock: asyncio.Lock, saver=None) -> None:
        self.conn, self.lock, self.saver = conn, lock, saver

    async def aget(self, key: str) -> dict | None:
        async with self.lock:
            row = await in_aiosqlite_thread(self.conn, _get, key)
        return _decode(row, self.serde, key)

    async def aput(self, key: str, model: str, thread_id: str | None, value: dict) -> None:
        params = _params(key, model, thread_id, value, self.serde)
        async with self.lock:
            await in_aiosqlite_thread(self.conn, _execute, _PUT.format(p="?"), params)

    async def aforget(self, thread_id: str) -> None:
        async with self.lock:
            await in_aiosqlite_thread(self.conn, _execute, _FORGET.format(p="?"), (thread_id,))


class PostgresCache(_Sealed):
    """Takes connections from the saver's pool (autocommit)."""

    def __init__(self, pool, saver=None) -> None:
        self.pool, self.saver = pool, saver

    def get(self, key: str) -> dict | None:
        with self.pool.connection() as conn:
            return _decode(conn.execute(_GET.format(p="%s"), (key,)).fetchone(), self.serde, key)

    def put(self, key: str, model: str, thread_id: str | None, value: dict) -> None:
        with self.pool.connection() as conn:
            conn.execute(_PUT.format(p="%s"), _params(key, model, thread_id, value, self.serde))

    def forget(self, thread_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(_FORGET.format(p="%s"), (thread_id,))


class AsyncPostgresCache(_Sealed):
    def __init__(self, pool, saver=None) -> None:
        self.pool, self.saver = pool, saver

    async def aget(self, key: str) -> dict | None:
        async with self.pool.connection() as conn:
            return _decode(await (await conn.execute(_GET.format(p="%s"), (key,))).fetchone(), self.serde, key)

    async def aput(self, key: str, model: str, thread_id: str | None, value: dict) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_PUT.format(p="%s"), _params(key, model, thread_id, value, self.serde))

    async def aforget(self, thread_id: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_FORGET.format(p="%s"), (thread_id,))
