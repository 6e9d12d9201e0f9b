"""One writer per thread: a run holds its thread's lock, and a second run on it gets ThreadBusy at once.

Sync keepers have hold(thread) / running(threads); async ones ahold / arunning; memory:// has both.
SQLite and Postgres: a lease row with an expiry, renewed while the run lasts; a lease whose process is gone
(same host, pid not alive) or whose time ran out is taken over. memory://: a lock in this process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

from savers.errors import ThreadBusy

LEASE_S = 30.0
RENEW_S = LEASE_S / 3


def _host() -> str:
    """This machine, and its pid namespace where there is one: only a process that sees the same pids may
    judge a pid dead (two containers can share a hostname but not each other's processes)."""
    try:
        return f"{socket.gethostname()}/pid:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


HOST = _host()


def _busy(thread: str) -> ThreadBusy:
    return ThreadBusy(f"thread '{thread}' is busy: another run is working on it right now; "
                      "wait for it to finish (see `threads`), or use another thread")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A process killed but not yet reaped by its parent (a zombie: a container whose first process does not
    # reap, a parent that never waits) answers the signal but runs no more.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc (macOS): alive, as the signal said
        return True


# -- leases: one row per held lock, with an expiry, renewed while held -----------------------------------------
# SQLite keeps them in agent_locks (a migration), on this machine's clock. Postgres keeps them in agent_leases,
# on the server's clock (no skew between hosts). Postgres used session advisory locks before: behind a
# transaction-mode pooler (pgbouncer) a session lock stays on whichever server connection ran the statement -
# never released, and invisible to the next client's statements - and it pinned a connection per running thread.
# A lease is plain rows: it works through any pooler and holds no connection while a run lasts.

_TAKE = """
INSERT INTO agent_locks (thread_id, owner, host, pid, expires_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (thread_id) DO UPDATE SET owner = excluded.owner, host = excluded.host, pid = excluded.pid,
    expires_at = excluded.expires_at
WHERE agent_locks.expires_at < ? OR agent_locks.owner = ?
"""
_HOLDER = "SELECT owner, host, pid FROM agent_locks WHERE thread_id = ?"
_DROP = "DELETE FROM agent_locks WHERE thread_id = ? AND owner = ?"
_RENEW = "UPDATE agent_locks SET expires_at = ? WHERE thread_id = ? AND owner = ?"
_LIVE = "SELECT thread_id, owner, host, pid FROM agent_locks WHERE expires_at >= ?"

# Made before the schema setup (whose own lease lives here), so outside the migrations; one creator at a time
# under a transaction-scoped lock, which a transaction pooler keeps on one server connection.
PG_LEASES_TABLE = """CREATE TABLE IF NOT EXISTS agent_leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
)"""
_PG_CREATE_LOCK = "SELECT pg_advisory_xact_lock(7216450982)"
_PG_EXISTS = "SELECT to_regclass('agent_leases') IS NOT NULL"
_PG_TAKE = """
INSERT INTO agent_leases AS l (name, owner, host, pid, expires_at)
VALUES (%s, %s, %s, %s, clock_timestamp() + %s * interval '1 second')
ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, host = EXCLUDED.host, pid = EXCLUDED.pid,
    expires_at = EXCLUDED.expires_at
WHERE l.expires_at < clock_timestamp() OR l.owner = EXCLUDED.owner
"""
_PG_HOLDER = "SELECT owner, host, pid FROM agent_leases WHERE name = %s"
_PG_DROP = "DELETE FROM agent_leases WHERE name = %s AND owner = %s"
_PG_RENEW = ("UPDATE agent_leases SET expires_at = clock_timestamp() + %s * interval '1 second' "
             "WHERE name = %s AND owner = %s")
_PG_LIVE_LEASES = ("SELECT name, owner, host, pid FROM agent_leases WHERE name = ANY(%s) "
                   "AND expires_at >= clock_timestamp()")


class SqliteLeaseSQL:
    """The lease statements of SQLite, as (sql, params); a thread's lease is named by its id."""

    prefix = ""

    @staticmethod
    def take(name: str, owner: str) -> tuple[str, tuple]:
        now = time.time()
        return _TAKE, (name, owner, HOST, os.getpid(), now + LEASE_S, now, owner)

    @staticmethod
    def holder(name: str) -> tuple[str, tuple]:
        return _HOLDER, (name,)

    @staticmethod
    def drop(name: str, owner: str) -> tuple[str, tuple]:
        return _DROP, (name, owner)

    @staticmethod
    def renew(name: str, owner: str) -> tuple[str, tuple]:
        return _RENEW, (time.time() + LEASE_S, name, owner)

    @staticmethod
    def live(names: list[str]) -> tuple[str, tuple]:
        return _LIVE, (time.time(),)


class PostgresLeaseSQL:
    """The lease statements of Postgres; a thread's lease is "thread:<id>", beside others such as "setup"."""

    prefix = "thread:"

    @staticmethod
    def take(name: str, owner: str) -> tuple[str, tuple]:
        return _PG_TAKE, (name, owner, HOST, os.getpid(), LEASE_S)

    @staticmethod
    def holder(name: str) -> tuple[str, tuple]:
        return _PG_HOLDER, (name,)

    @staticmethod
    def drop(name: str, owner: str) -> tuple[str, tuple]:
        return _PG_DROP, (name, owner)

    @staticmethod
    def renew(name: str, owner: str) -> tuple[str, tuple]:
        return _PG_RENEW, (LEASE_S, name, owner)

    @staticmethod
    def live(names: list[str]) -> tuple[str, tuple]:
        return _PG_LIVE_LEASES, (names,)


def create_lease_table(conn) -> None:
    """agent_leases, if missing (a psycopg connection in autocommit mode)."""
    if not conn.execute(_PG_EXISTS).fetchone()[0]:
        with conn.transaction():
            conn.execute(_PG_CREATE_LOCK)
            conn.execute(PG_LEASES_TABLE)


async def acreate_lease_table(conn) -> None:
    if not (await (await conn.execute(_PG_EXISTS)).fetchone())[0]:
        async with conn.transaction():
            await conn.execute(_PG_CREATE_LOCK)
            await conn.execute(PG_LEASES_TABLE)


class _SqliteStore:
    """Lease statements on the saver's SQLite connection, under the saver's lock, each committed."""

    def __init__(self, conn, lock: threading.Lock):
        import sqlite3

        self.conn, self.lock, self.transient = conn, lock, (sqlite3.OperationalError,)

    def count(self, sql: str, params: tuple) -> int:
        with self.lock:
            changed = self.conn.execute(sql, params).rowcount
            self.conn.commit()
            return changed

    def rows(self, sql: str, params: tuple) -> list[tuple]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()


class _AsyncSqliteStore:
    def __init__(self, conn, lock: asyncio.Lock):
        import sqlite3

        self.conn, self.lock, self.transient = conn, lock, (sqlite3.OperationalError,)

    async def count(self, sql: str, params: tuple) -> int:
        async with self.lock:
            cur = await self.conn.execute(sql, params)
            await self.conn.commit()
            return cur.rowcount

    async def rows(self, sql: str, params: tuple) -> list[tuple]:
        async with self.lock:
            async with self.conn.execute(sql, params) as cur:
                return list(await cur.fetchall())


class _PoolStore:
    """Lease statements on a connection of the saver's Postgres pool, each its own transaction (autocommit)."""

    def __init__(self, pool):
        import psycopg

        self.pool, self.transient = pool, (psycopg.OperationalError,)

    def count(self, sql: str, params: tuple) -> int:
        from psycopg.rows import tuple_row

        with self.pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(sql, params)
            return cur.rowcount

    def rows(self, sql: str, params: tuple) -> list[tuple]:
        from psycopg.rows import tuple_row

        with self.pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            return cur.execute(sql, params).fetchall()


class _AsyncPoolStore:
    def __init__(self, pool):
        import psycopg

        self.pool, self.transient = pool, (psycopg.OperationalError,)

    async def count(self, sql: str, params: tuple) -> int:
        from psycopg.rows import tuple_row

        async with self.pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(sql, params)
            return cur.rowcount

    async def rows(self, sql: str, params: tuple) -> list[tuple]:
        from psycopg.rows import tuple_row

        async with self.pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            return await (await cur.execute(sql, params)).fetchall()


def _abandoned(row) -> str | None:
    """The owner of a lease whose process died on this machine (it can be taken over without waiting)."""
    if row is None:
        return None
    owner, host, pid = row
    return owner if host == HOST and pid != os.getpid() and not _pid_alive(pid) else None


def _running(names: dict[str, str], rows) -> set[str]:
    """The threads (names: lease name -> thread) whose unexpired lease (rows: name, owner, host, pid) a live
    process holds. A lease whose process died on this machine (kill -9) is no run: the next run takes it over
    at once, so until it runs out (LEASE_S) `threads` would otherwise show a crashed thread as running."""
    return {names[name] for name, *holder in rows if name in names and _abandoned(holder) is None}


class Leases:
    """Sync leases: hold(thread) / running(threads) for runs; lease(name, busy) for any other named lock."""

    def __init__(self, store, sql):
        self.store, self.sql = store, sql

    def _take(self, name: str, owner: str) -> bool:
        rows = self.store.rows(*self.sql.holder(name))
        dead = _abandoned(rows[0] if rows else None)
        if dead:
            self.store.count(*self.sql.drop(name, dead))
        return self.store.count(*self.sql.take(name, owner)) == 1

    @contextmanager
    def lease(self, name: str, busy: Callable[[], float]) -> Iterator[None]:
        """Hold lease `name` while the block runs. Held by another: `busy()` raises, or returns the pause
        before trying again. A database that fails while the lease is held costs renewals, not the run:
        the lease runs out on its own if its release fails too."""
        owner = uuid.uuid4().hex
        while not self._take(name, owner):
            time.sleep(busy())
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(RENEW_S):
                with suppress(*self.store.transient):
                    self.store.count(*self.sql.renew(name, owner))

        heartbeat = threading.Thread(target=renew, name=f"lease:{name}", daemon=True)
        heartbeat.start()
        try:
            yield
        finally:
            stop.set()
            heartbeat.join()
            with suppress(*self.store.transient):
                self.store.count(*self.sql.drop(name, owner))

    def hold(self, thread: str):
        def refuse() -> float:
            raise _busy(thread)

        return self.lease(self.sql.prefix + thread, refuse)

    def running(self, threads: list[str]) -> set[str]:
        names = {self.sql.prefix + t: t for t in threads}
        return _running(names, self.store.rows(*self.sql.live(list(names))))


class AsyncLeases:
    """The async twin of Leases: ahold / arunning, alease."""

    def __init__(self, store, sql):
        self.store, self.sql = store, sql

    async def _take(self, name: str, owner: str) -> bool:
        rows = await self.store.rows(*self.sql.holder(name))
        dead = _abandoned(rows[0] if rows else None)
        if dead:
            await self.store.count(*self.sql.drop(name, dead))
        return await self.store.count(*self.sql.take(name, owner)) == 1

    @asynccontextmanager
    async def alease(self, name: str, busy: Callable[[], float]) -> AsyncIterator[None]:
        owner = uuid.uuid4().hex
        while not await self._take(name, owner):
            await asyncio.sleep(busy())

        async def renew() -> None:
            while True:
                await asyncio.sleep(RENEW_S)
                with suppress(*self.store.transient):
                    await self.store.count(*self.sql.renew(name, owner))

        heartbeat = asyncio.create_task(renew())
        try:
            yield
        finally:
            heartbeat.cancel()  # not awaited: that could swallow a cancellation of this task (Ctrl+C)
            with suppress(*self.store.transient):
                await self.store.count(*self.sql.drop(name, owner))

    def ahold(self, thread: str):
        def refuse() -> float:
            raise _busy(thread)

        return self.alease(self.sql.prefix + thread, refuse)

    async def arunning(self, threads: list[str]) -> set[str]:
        names = {self.sql.prefix + t: t for t in threads}
        return _running(names, await self.store.rows(*self.sql.live(list(names))))


# -- memory:// -----------------------------------------------------------------------------------------------


class MemoryLocks:
    def __init__(self):
        self._held: set[str] = set()
        self._guard = threading.Lock()

    def _take(self, thread: str) -> None:
        with self._guard:
            if thread in self._held:
                raise _busy(thread)
            self._held.add(thread)

    def _drop(self, thread: str) -> None:
        with self._guard:
            self._held.discard(thread)

    @contextmanager
    def hold(self, thread: str) -> Iterator[None]:
        self._take(thread)
        try:
            yield
        finally:
            self._drop(thread)

    @asynccontextmanager
    async def ahold(self, thread: str) -> AsyncIterator[None]:
        self._take(thread)
        try:
            yield
        finally:
            self._drop(thread)

    def running(self, threads: list[str]) -> set[str]:
        with self._guard:
            return self._held & set(threads)

    async def arunning(self, threads: list[str]) -> set[str]:
        return self.running(threads)


def locks_for(saver):
    """The lock keeper for a saver's database, made once per saver."""
    keeper = getattr(saver, "_agent_locks", None)
    if keeper is None:
        from savers.catalog import backend

        kind = backend(saver)  # without importing the Postgres driver for a SQLite saver
        if kind == "memory":
            keeper = MemoryLocks()
        elif kind == "postgres":
            from langgraph.checkpoint.postgres import PostgresSaver

            keeper = (Leases(_PoolStore(saver.conn), PostgresLeaseSQL) if isinstance(saver, PostgresSaver)
                      else AsyncLeases(_AsyncPoolStore(saver.conn), PostgresLeaseSQL))
        else:
            from langgraph.checkpoint.sqlite import SqliteSaver

            keeper = (Leases(_SqliteStore(saver.conn, saver.lock), SqliteLeaseSQL) if isinstance(saver, SqliteSaver)
                      else AsyncLeases(_AsyncSqliteStore(saver.conn, saver.lock), SqliteLeaseSQL))
        saver._agent_locks = keeper
    return keeper
