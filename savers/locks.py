"""One writer per thread: a run holds its thread's lock, and a second run on it gets ThreadBusy at once.

Sync keepers have hold(thread) / running(threads); async ones ahold / arunning; memory:// has both.
Postgres: a session advisory lock on a connection of its own (the server drops it when the session dies).
SQLite: a lease row with an expiry, renewed while the run lasts; a lease whose process is gone (same host,
pid not alive) or whose time ran out is taken over. memory://: a lock in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from savers.errors import ThreadBusy

LEASE_S = 30.0
RENEW_S = LEASE_S / 3
HOST = socket.gethostname()


def _busy(thread: str) -> ThreadBusy:
    return ThreadBusy(f"thread '{thread}' is busy: another run is working on it right now; "
                      "wait for it to finish (see `threads`), or use another thread")


def advisory_key(thread: str) -> int:
    """A signed 64-bit key per thread for pg_advisory_lock, namespaced so other apps' keys do not clash."""
    digest = hashlib.sha256(f"agent-thread:{thread}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- SQLite --------------------------------------------------------------------------------------------------

_TAKE = """
INSERT INTO agent_locks (thread_id, owner, host, pid, expires_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (thread_id) DO UPDATE SET owner = excluded.owner, host = excluded.host, pid = excluded.pid,
    expires_at = excluded.expires_at
WHERE agent_locks.expires_at < ? OR agent_locks.owner = ?
"""
_HOLDER = "SELECT owner, host, pid FROM agent_locks WHERE thread_id = ?"
_DROP = "DELETE FROM agent_locks WHERE thread_id = ? AND owner = ?"
_RENEW = "UPDATE agent_locks SET expires_at = ? WHERE thread_id = ? AND owner = ?"
_LIVE = "SELECT thread_id FROM agent_locks WHERE expires_at >= ?"


def _abandoned(row) -> str | None:
    """The owner of a lease whose process died on this machine (it can be taken over without waiting)."""
    if row is None:
        return None
    owner, host, pid = row
    return owner if host == HOST and pid != os.getpid() and not _pid_alive(pid) else None


class SqliteLocks:
    def __init__(self, conn, lock: threading.Lock):
        self.conn, self.lock = conn, lock

    def _take(self, thread: str, owner: str) -> bool:
        with self.lock:
            dead = _abandoned(self.conn.execute(_HOLDER, (thread,)).fetchone())
            if dead:
                self.conn.execute(_DROP, (thread, dead))
            now = time.time()
            taken = self.conn.execute(_TAKE, (thread, owner, HOST, os.getpid(), now + LEASE_S, now, owner)).rowcount
            self.conn.commit()
            return taken == 1

    def _write(self, sql: str, params: tuple) -> None:
        with self.lock:
            self.conn.execute(sql, params)
            self.conn.commit()

    @contextmanager
    def hold(self, thread: str) -> Iterator[None]:
        owner = uuid.uuid4().hex
        if not self._take(thread, owner):
            raise _busy(thread)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(RENEW_S):
                self._write(_RENEW, (time.time() + LEASE_S, thread, owner))

        heartbeat = threading.Thread(target=renew, name=f"lease:{thread}", daemon=True)
        heartbeat.start()
        try:
            yield
        finally:
            stop.set()
            heartbeat.join()
            self._write(_DROP, (thread, owner))

    def running(self, threads: list[str]) -> set[str]:
        with self.lock:
            return {row[0] for row in self.conn.execute(_LIVE, (time.time(),)).fetchall()} & set(threads)


class AsyncSqliteLocks:
    def __init__(self, conn, lock: asyncio.Lock):
        self.conn, self.lock = conn, lock

    async def _take(self, thread: str, owner: str) -> bool:
        async with self.lock:
            async with self.conn.execute(_HOLDER, (thread,)) as cur:
                dead = _abandoned(await cur.fetchone())
            if dead:
                await self.conn.execute(_DROP, (thread, dead))
            now = time.time()
            cur = await self.conn.execute(_TAKE, (thread, owner, HOST, os.getpid(), now + LEASE_S, now, owner))
            await self.conn.commit()
            return cur.rowcount == 1

    async def _write(self, sql: str, params: tuple) -> None:
        async with self.lock:
            await self.conn.execute(sql, params)
            await self.conn.commit()

    @asynccontextmanager
    async def ahold(self, thread: str) -> AsyncIterator[None]:
        owner = uuid.uuid4().hex
        if not await self._take(thread, owner):
            raise _busy(thread)

        async def renew() -> None:
            while True:
                await asyncio.sleep(RENEW_S)
                await self._write(_RENEW, (time.time() + LEASE_S, thread, owner))

        heartbeat = asyncio.create_task(renew())
        try:
            yield
        finally:
            heartbeat.cancel()
            await self._write(_DROP, (thread, owner))

    async def arunning(self, threads: list[str]) -> set[str]:
        async with self.lock:
            async with self.conn.execute(_LIVE, (time.time(),)) as cur:
                return {row[0] for row in await cur.fetchall()} & set(threads)


# -- Postgres ------------------------------------------------------------------------------------------------

# A bigint advisory key shows in pg_locks split in two: classid (high 32 bits) and objid (low 32 bits).
_PG_LIVE = ("SELECT classid::bigint AS hi, objid::bigint AS lo FROM pg_locks "
            "WHERE locktype = 'advisory' AND objsubid = 1 AND granted")


def _pg_key_parts(key: int) -> tuple[int, int]:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


# Released explicitly before the connection closes: the server drops a closed session's locks only when its
# backend notices the disconnect, a moment later - long enough for the next run on the thread to find it busy.
_PG_UNLOCK = "SELECT pg_advisory_unlock(%s)"


def _unlock(conn, thread: str) -> None:
    import psycopg

    if not conn.closed:
        try:
            conn.execute(_PG_UNLOCK, (advisory_key(thread),))
        except psycopg.Error:
            pass  # the session is gone, and its locks with it


class PostgresLocks:
    """Each held lock has its own connection, outside the saver's pool, so long runs cannot starve it."""

    def __init__(self, pool):
        self.pool = pool

    @contextmanager
    def hold(self, thread: str) -> Iterator[None]:
        import psycopg

        with psycopg.connect(self.pool.conninfo, **{**self.pool.kwargs, "autocommit": True}) as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (advisory_key(thread),)).fetchone()
            if not (row["ok"] if isinstance(row, dict) else row[0]):
                raise _busy(thread)
            try:
                yield
            finally:
                _unlock(conn, thread)

    def running(self, threads: list[str]) -> set[str]:
        with self.pool.connection() as conn:
            held = {(r["hi"], r["lo"]) for r in conn.execute(_PG_LIVE).fetchall()}
        return {t for t in threads if _pg_key_parts(advisory_key(t)) in held}


class AsyncPostgresLocks:
    def __init__(self, pool):
        self.pool = pool

    @asynccontextmanager
    async def ahold(self, thread: str) -> AsyncIterator[None]:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.pool.conninfo,
                                                         **{**self.pool.kwargs, "autocommit": True}) as conn:
            row = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok",
                                            (advisory_key(thread),))).fetchone()
            if not (row["ok"] if isinstance(row, dict) else row[0]):
                raise _busy(thread)
            try:
                yield
            finally:
                if not conn.closed:
                    try:
                        await conn.execute(_PG_UNLOCK, (advisory_key(thread),))
                    except psycopg.Error:
                        pass

    async def arunning(self, threads: list[str]) -> set[str]:
        async with self.pool.connection() as conn:
            held = {(r["hi"], r["lo"]) for r in await (await conn.execute(_PG_LIVE)).fetchall()}
        return {t for t in threads if _pg_key_parts(advisory_key(t)) in held}


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
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.checkpoint.postgres import PostgresSaver
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from langgraph.checkpoint.sqlite import SqliteSaver

        if isinstance(saver, InMemorySaver):
            keeper = MemoryLocks()
        elif isinstance(saver, PostgresSaver):
            keeper = PostgresLocks(saver.conn)
        elif isinstance(saver, AsyncPostgresSaver):
            keeper = AsyncPostgresLocks(saver.conn)
        elif isinstance(saver, SqliteSaver):
            keeper = SqliteLocks(saver.conn, saver.lock)
        else:
            keeper = AsyncSqliteLocks(saver.conn, saver.lock)
        saver._agent_locks = keeper
    return keeper
