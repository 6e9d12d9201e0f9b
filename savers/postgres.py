"""Postgres savers (sync and async) on top of langgraph-checkpoint-postgres, over a psycopg connection pool.

Connection problems surface before any work starts, as one StorageError naming host and port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import cached_property

import psycopg
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres._ainternal import get_connection as aget_connection
from langgraph.checkpoint.postgres._internal import get_connection
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row

from savers.cache import AsyncPostgresCache, PostgresCache
from savers.errors import StorageError
from savers.migrations import amigrate_postgres, migrate_postgres

# Unreachable servers must fail within seconds, not hang on the OS default (minutes).
CONNECT_TIMEOUT_S = 5
POOL_MAX_SIZE = 10
# autocommit and dict rows are what the official savers expect; prepare_threshold=0 prepares
# statements on first use, which is what makes repeated checkpoint writes cheap.
CONNECTION_KWARGS = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}


class Postgres(PostgresSaver):
    """The official PostgresSaver, plus our tables (migrated in setup) and the model-reply cache."""

    def setup(self) -> None:
        super().setup()
        with get_connection(self.conn) as conn:
            migrate_postgres(conn)

    @cached_property
    def response_cache(self) -> PostgresCache:
        return PostgresCache(self.conn)


class AsyncPostgres(AsyncPostgresSaver):
    """The official AsyncPostgresSaver, plus our tables (migrated in setup) and the model-reply cache."""

    async def setup(self) -> None:
        await super().setup()
        async with aget_connection(self.conn) as conn:
            await amigrate_postgres(conn)

    @cached_property
    def response_cache(self) -> AsyncPostgresCache:
        return AsyncPostgresCache(self.conn)


def check_conninfo(url: str) -> str:
    """The URL as psycopg understands it, or a StorageError if it is malformed."""
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StorageError(f"malformed Postgres URL: {str(exc).strip().splitlines()[0]}") from None
    return url


def _where(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}"


def _storage_error(url: str, exc: Exception) -> StorageError:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # libpq prefixes its reasons with "connection to server at ... failed:"; keep the reason.
    reason = lines[-1] if lines else type(exc).__name__
    reason = reason.split("failed: ", 1)[-1]
    return StorageError(f"cannot connect to Postgres at {_where(url)}: {reason}")


def _pool_kwargs(url: str) -> dict:
    return {
        "conninfo": url,
        "min_size": 1,
        "max_size": POOL_MAX_SIZE,
        "kwargs": {**CONNECTION_KWARGS, "connect_timeout": CONNECT_TIMEOUT_S},
        "timeout": CONNECT_TIMEOUT_S * 2,
        "open": False,
    }


@contextmanager
def open_postgres(url: str) -> Iterator[Postgres]:
    from psycopg_pool import ConnectionPool

    try:
        # One plain connection first: its error says why (refused, auth, no such database).
        psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg.Error as exc:
        raise _storage_error(url, exc) from None
    pool = ConnectionPool(check=ConnectionPool.check_connection, **_pool_kwargs(url))
    pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
    try:
        saver = Postgres(pool)
        try:
            saver.setup()
        except psycopg.Error as exc:
            raise StorageError(f"cannot set up the Postgres schema at {_where(url)}: {exc}") from exc
        yield saver
    finally:
        pool.close()


@asynccontextmanager
async def open_async_postgres(url: str) -> AsyncIterator[AsyncPostgres]:
    from psycopg_pool import AsyncConnectionPool

    try:
        await (await psycopg.AsyncConnection.connect(url, connect_timeout=CONNECT_TIMEOUT_S)).close()
    except psycopg.Error as exc:
        raise _storage_error(url, exc) from None
    pool = AsyncConnectionPool(check=AsyncConnectionPool.check_connection, **_pool_kwargs(url))
    await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
    try:
        saver = AsyncPostgres(pool)
        try:
            await saver.setup()
        except psycopg.Error as exc:
            raise StorageError(f"cannot set up the Postgres schema at {_where(url)}: {exc}") from exc
        yield saver
    finally:
        await pool.close()
