"""SQLite savers (sync and async) on top of langgraph-checkpoint-sqlite, opened with safe, fast settings.

WAL with synchronous=NORMAL is durable against a process crash (SIGKILL); only power loss can drop the last commit.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import cached_property

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from savers.cache import AsyncSqliteCache, SqliteCache
from savers.errors import StorageError
from savers.migrations import amigrate_sqlite, migrate_sqlite

# Readers (e.g. `history` while a run writes) wait this long for a lock instead of failing at once.
BUSY_TIMEOUT_MS = 10_000
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
)


class Sqlite(SqliteSaver):
    """The official SqliteSaver, plus our tables (migrated in setup) and the model-reply cache."""

    _agent_ready = False

    def setup(self) -> None:
        super().setup()
        if not self._agent_ready:
            with self.lock:
                migrate_sqlite(self.conn)
                self.conn.commit()
            self._agent_ready = True

    @cached_property
    def response_cache(self) -> SqliteCache:
        return SqliteCache(self.conn, self.lock)


class AsyncSqlite(AsyncSqliteSaver):
    """The official AsyncSqliteSaver, plus our tables (migrated in setup) and the model-reply cache."""

    _agent_ready = False

    async def setup(self) -> None:
        await super().setup()
        if not self._agent_ready:
            async with self.lock:
                await amigrate_sqlite(self.conn)
                await self.conn.commit()
            self._agent_ready = True

    @cached_property
    def response_cache(self) -> AsyncSqliteCache:
        return AsyncSqliteCache(self.conn, self.lock)


def check_path(path: str, create: bool) -> str:
    """The absolute file path, or a StorageError that says why SQLite could not use it."""
    absolute = os.path.abspath(path)
    if not create and not os.path.exists(absolute):
        raise StorageError(f"no SQLite database at {absolute}: nothing is stored there yet (check --db)")
    directory = os.path.dirname(absolute)
    if not os.path.isdir(directory):
        raise StorageError(f"cannot open SQLite database {path}: directory {directory} does not exist")
    if os.path.isdir(absolute):
        raise StorageError(f"cannot open SQLite database {path}: it is a directory")
    return absolute


def _storage_error(path: str, exc: sqlite3.Error) -> StorageError:
    text = str(exc)
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return StorageError(
            f"cannot write SQLite database {path}: its directory or file is read-only ({text}); "
            "choose a writable path with --db sqlite:///path.db"
        )
    if "not a database" in text:
        return StorageError(f"cannot open {path}: the file is not a SQLite database")
    return StorageError(f"SQLite database {path}: {text}")


@contextmanager
def open_sqlite(path: str, create: bool = True) -> Iterator[Sqlite]:
    absolute = check_path(path, create)
    try:
        # The saver serializes access with its own lock, so one connection may serve many threads.
        conn = sqlite3.connect(absolute, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise _storage_error(path, exc) from exc
    try:
        try:
            for pragma in PRAGMAS:
                conn.execute(pragma)
            saver = Sqlite(conn)
            saver.setup()
        except sqlite3.Error as exc:
            raise _storage_error(path, exc) from exc
        yield saver
    finally:
        conn.close()


@asynccontextmanager
async def open_async_sqlite(path: str, create: bool = True) -> AsyncIterator[AsyncSqlite]:
    import aiosqlite

    absolute = check_path(path, create)
    try:
        conn = await aiosqlite.connect(absolute, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise _storage_error(path, exc) from exc
    try:
        try:
            for pragma in PRAGMAS:
                await conn.execute(pragma)
            saver = AsyncSqlite(conn)
            await saver.setup()
        except sqlite3.Error as exc:
            raise _storage_error(path, exc) from exc
        yield saver
    finally:
        await conn.close()
