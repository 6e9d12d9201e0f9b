"""Our own tables, beside LangGraph's in the same database, created by ordered, versioned migrations.

Like the official savers: the position of a migration in its list is its version; never edit or reorder one.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger("savers.migrations")


class Optional(str):
    """A migration that may fail on a database whose existing rows break what it adds (a unique index over
    rows written before the rule): it is then skipped, with a warning, instead of failing every open."""


def _skipped(version: int, exc: Exception) -> None:
    log.warning("migration %d skipped: %s", version, str(exc).strip().splitlines()[0])


# Applied in order by every saver's setup(); version n is recorded in agent_migrations once it ran.
SQLITE = [
    "CREATE TABLE IF NOT EXISTS agent_migrations (v INTEGER PRIMARY KEY)",
    # Model replies, keyed by a hash of the exact request (model, schema, messages): an unchanged prompt is
    # answered from here on replay and fork. thread_id is the thread that first paid for the reply.
    """CREATE TABLE IF NOT EXISTS agent_llm_cache (
        key TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        thread_id TEXT,
        value TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    )""",
    "CREATE INDEX IF NOT EXISTS agent_llm_cache_thread ON agent_llm_cache (thread_id)",
    # Channel values stored apart from their checkpoints, once per version (savers/compact.py); `base` is the
    # version a delta extends. WITHOUT ROWID: the primary key is the table, not a second copy of the keys.
    """CREATE TABLE IF NOT EXISTS agent_blobs (
        thread_id TEXT NOT NULL,
        checkpoint_ns TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL,
        version TEXT NOT NULL,
        type TEXT NOT NULL,
        blob BLOB,
        base TEXT,
        PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
    ) WITHOUT ROWID""",
    # One lease per running thread (Postgres uses advisory locks instead): who holds it, until when.
    """CREATE TABLE IF NOT EXISTS agent_locks (
        thread_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        expires_at REAL NOT NULL
    )""",
    # Encryption at rest (savers/keyring.py): the database's random salt for the key derivation, and a value
    # encrypted with the key, to tell a wrong key at open. One row, written with the first encrypted open.
    """CREATE TABLE IF NOT EXISTS agent_keyring (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        salt BLOB NOT NULL,
        proof BLOB NOT NULL
    )""",
    # Delete is final: the newest checkpoint id of each deleted thread. A write that names a checkpoint up to
    # it (a late write of a cancelled run) is refused; a new run on the same thread id makes newer ids.
    """CREATE TABLE IF NOT EXISTS agent_tombstones (
        thread_id TEXT PRIMARY KEY,
        last_checkpoint_id TEXT NOT NULL
    )""",
    # One writer per thread, kept by the database: a run goes on ("loop") or starts ("input") from a checkpoint
    # at most once. Forks (source "fork", "update") branch off on purpose and are not counted; nor are first
    # checkpoints (no parent: NULLs are distinct), which LangGraph's own conformance suite puts several of.
    Optional("CREATE UNIQUE INDEX IF NOT EXISTS agent_one_writer ON checkpoints "
             "(thread_id, checkpoint_ns, parent_checkpoint_id) "
             "WHERE json_extract(CAST(metadata AS TEXT), '$.source') IN ('loop', 'input')"),
    # ... now kept by the put itself (savers/sqlite.py PUT_NEXT), which costs a put less than the index did.
    "DROP INDEX IF EXISTS agent_one_writer",
    # The writes of a checkpoint's parent, carried by its row instead of rows of `writes` (savers/sqlite.py
    # HeldWrites.put_row). A database opened by a version before this one would not see them.
    "ALTER TABLE checkpoints ADD COLUMN parent_writes BLOB",
]

POSTGRES = [
    "CREATE TABLE IF NOT EXISTS agent_migrations (v INTEGER PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS agent_llm_cache (
        key TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        thread_id TEXT,
        value TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS agent_llm_cache_thread ON agent_llm_cache (thread_id)",
    # The version a stored value extends when it is a delta (savers/compact.py); NULL for a whole value.
    "ALTER TABLE checkpoint_blobs ADD COLUMN IF NOT EXISTS base TEXT",
    """CREATE TABLE IF NOT EXISTS agent_keyring (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        salt BYTEA NOT NULL,
        proof BYTEA NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS agent_tombstones (
        thread_id TEXT PRIMARY KEY,
        last_checkpoint_id TEXT NOT NULL
    )""",
    Optional("CREATE UNIQUE INDEX IF NOT EXISTS agent_one_writer ON checkpoints "
             "(thread_id, checkpoint_ns, parent_checkpoint_id) "
             "WHERE metadata ->> 'source' IN ('loop', 'input')"),
    # The official migrations index each table by thread_id, which its primary key already leads with: every
    # lookup by thread (list, delete_thread, copy_thread, prune) is served by the primary key, and each index
    # cost every insert a b-tree more to write. Dropped: replayed steps, same run, server CPU 285 -> 270 us
    # per step (bench/calls.py's calls; bench/RESULTS.md). DROP INDEX waits for running
    # transactions on the table and blocks new ones while it runs (once, in the migration).
    *(f"DROP INDEX IF EXISTS {table}_thread_id_idx" for table in ("checkpoints", "checkpoint_blobs",
                                                                   "checkpoint_writes")),
]

# Two processes starting at once against a fresh Postgres must not both run the same migration.
POSTGRES_LOCK = "SELECT pg_advisory_xact_lock(7216450981)"
CURRENT_VERSION = "SELECT COALESCE(MAX(v), -1) FROM agent_migrations"


def pending(migrations: list[str], current: int) -> list[tuple[int, str]]:
    """The (version, sql) pairs still to run after version `current`. A database a newer version migrated
    further is refused: what it stores where this version does not look (savers/sqlite.py parent_writes, a
    step's writes in its checkpoint's row) would read as missing, and writes would mix both forms."""
    if current >= len(migrations):
        from savers.errors import StorageError

        raise StorageError(f"this database was written by a newer version of agent (schema {current}, this version "
                           f"knows up to {len(migrations) - 1}): open it with that version or a later one")
    return list(enumerate(migrations))[current + 1:]


def migrate_sqlite(conn) -> None:
    """Run what is missing in one transaction, under SQLite's write lock: processes that open a fresh file
    at once wait for each other (busy timeout) instead of colliding on agent_migrations. A connection in
    autocommit mode (isolation_level None), as the savers open them."""
    conn.execute(SQLITE[0])
    if not pending(SQLITE, conn.execute(CURRENT_VERSION).fetchone()[0]):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        _migrate_sqlite_locked(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate_sqlite_locked(conn) -> None:
    current = conn.execute(CURRENT_VERSION).fetchone()[0]  # again: another process may have migrated
    for version, sql in pending(SQLITE, current):
        if isinstance(sql, Optional):
            conn.execute("SAVEPOINT agent_optional")
            try:
                conn.execute(sql)
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK TO agent_optional")
                _skipped(version, exc)
            conn.execute("RELEASE agent_optional")
        else:
            conn.execute(sql)
        conn.execute("INSERT INTO agent_migrations (v) VALUES (?)", (version,))


async def amigrate_sqlite(conn) -> None:
    await conn.execute(SQLITE[0])
    if not pending(SQLITE, (await (await conn.execute(CURRENT_VERSION)).fetchone())[0]):
        return
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await _amigrate_sqlite_locked(conn)
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise


async def _amigrate_sqlite_locked(conn) -> None:
    current = (await (await conn.execute(CURRENT_VERSION)).fetchone())[0]
    for version, sql in pending(SQLITE, current):
        if isinstance(sql, Optional):
            await conn.execute("SAVEPOINT agent_optional")
            try:
                await conn.execute(sql)
            except sqlite3.Error as exc:
                await conn.execute("ROLLBACK TO agent_optional")
                _skipped(version, exc)
            await conn.execute("RELEASE agent_optional")
        else:
            await conn.execute(sql)
        await conn.execute("INSERT INTO agent_migrations (v) VALUES (?)", (version,))


def migrate_postgres(conn) -> None:
    """Under a transaction-scoped advisory lock, so concurrent starts serialize instead of colliding."""
    import psycopg

    with conn.transaction():
        conn.execute(POSTGRES_LOCK)
        conn.execute(POSTGRES[0])
        current = _first(conn.execute(CURRENT_VERSION).fetchone())
        for version, sql in pending(POSTGRES, current):
            try:
                with conn.transaction():  # a savepoint
                    conn.execute(sql)
            except psycopg.Error as exc:
                if not isinstance(sql, Optional):
                    raise
                _skipped(version, exc)
            conn.execute("INSERT INTO agent_migrations (v) VALUES (%s)", (version,))


async def amigrate_postgres(conn) -> None:
    import psycopg

    async with conn.transaction():
        await conn.execute(POSTGRES_LOCK)
        await conn.execute(POSTGRES[0])
        current = _first(await (await conn.execute(CURRENT_VERSION)).fetchone())
        for version, sql in pending(POSTGRES, current):
            try:
                async with conn.transaction():
                    await conn.execute(sql)
            except psycopg.Error as exc:
                if not isinstance(sql, Optional):
                    raise
                _skipped(version, exc)
            await conn.execute("INSERT INTO agent_migrations (v) VALUES (%s)", (version,))


def _first(row) -> int:
    # Pool connections return dict rows (what the official savers expect); plain ones return tuples.
    return next(iter(row.values())) if isinstance(row, dict) else row[0]
