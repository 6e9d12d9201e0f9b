"""Questions about what a database holds that LangGraph's saver interface cannot answer cheaply:
which threads exist, a thread's checkpoint ids and parent links, and which ids start with a prefix. One SQL
query each."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadRow:
    thread_id: str
    checkpoints: int
    head: str  # the newest checkpoint id (LangGraph's ids sort by time)
    leaves: int  # checkpoints nobody descends from: 1 for a straight line, one more per branch


# Root namespace only: subgraph checkpoints belong to their parent's checkpoint, not to the thread's history.
# Leaves are the checkpoints less those that are some checkpoint's parent: each parent is found by primary
# key, where "has no child" would scan the thread once per checkpoint (no index covers every parent link).
_THREADS = """
SELECT c.thread_id AS thread_id, COUNT(*) AS checkpoints, MAX(c.checkpoint_id) AS head,
       COUNT(*) - COUNT(DISTINCT p.checkpoint_id) AS leaves
FROM checkpoints c
LEFT JOIN checkpoints p
  ON p.thread_id = c.thread_id AND p.checkpoint_ns = '' AND p.checkpoint_id = c.parent_checkpoint_id
WHERE c.checkpoint_ns = '' {where}
GROUP BY c.thread_id
ORDER BY head DESC
"""
_IDS = ("SELECT checkpoint_id FROM checkpoints WHERE thread_id = {p} AND checkpoint_ns = '' "
        "AND checkpoint_id LIKE {p} ORDER BY checkpoint_id")
_LINKS = "SELECT checkpoint_id, parent_checkpoint_id FROM checkpoints WHERE thread_id = {p} AND checkpoint_ns = ''"


def _like(prefix: str) -> str:
    return prefix.replace("\\", "").replace("%", "").replace("_", "") + "%"


def _rows_to_threads(rows) -> list[ThreadRow]:
    def get(row, i, name):
        return row[name] if isinstance(row, dict) else row[i]

    return [ThreadRow(get(r, 0, "thread_id"), int(get(r, 1, "checkpoints")), get(r, 2, "head"),
                      int(get(r, 3, "leaves"))) for r in rows]


def _memory_threads(saver, thread: str | None) -> list[ThreadRow]:
    result = []
    for thread_id, namespaces in saver.storage.items():
        if thread is not None and thread_id != thread:
            continue
        checkpoints = namespaces.get("", {})
        if not checkpoints:
            continue
        parents = {value[2] for value in checkpoints.values()}
        leaves = sum(1 for cid in checkpoints if cid not in parents)
        result.append(ThreadRow(thread_id, len(checkpoints), max(checkpoints), leaves))
    return sorted(result, key=lambda row: row.head, reverse=True)


def backend(saver) -> str:
    """Without importing the Postgres driver for a SQLite saver (150 ms of every command's start): a saver
    can only be a Postgres one if its module was imported."""
    import sys

    from langgraph.checkpoint.memory import InMemorySaver

    if isinstance(saver, InMemorySaver):
        return "memory"
    postgres = [getattr(sys.modules.get(name), cls, None) for name, cls in (
        ("langgraph.checkpoint.postgres", "PostgresSaver"), ("langgraph.checkpoint.postgres.aio", "AsyncPostgresSaver"))]
    return "postgres" if isinstance(saver, tuple(c for c in postgres if c is not None)) else "sqlite"


def _threads_query(kind: str, thread: str | None) -> tuple[str, tuple]:
    p = "%s" if kind == "postgres" else "?"
    if thread is None:
        return _THREADS.format(where=""), ()
    return _THREADS.format(where=f"AND c.thread_id = {p}"), (thread,)


def list_threads(saver, thread: str | None = None) -> list[ThreadRow]:
    """Every thread (or just `thread`), the one with the newest checkpoint first."""
    kind = backend(saver)
    if kind == "memory":
        return _memory_threads(saver, thread)
    sql, params = _threads_query(kind, thread)
    if kind == "postgres":
        with saver.conn.connection() as conn:
            return _rows_to_threads(conn.execute(sql, params).fetchall())
    with saver.cursor(transaction=False) as cur:
        return _rows_to_threads(cur.execute(sql, params).fetchall())


async def alist_threads(saver, thread: str | None = None) -> list[ThreadRow]:
    kind = backend(saver)
    if kind == "memory":
        return _memory_threads(saver, thread)
    sql, params = _threads_query(kind, thread)
    if kind == "postgres":
        async with saver.conn.connection() as conn:
            return _rows_to_threads(await (await conn.execute(sql, params)).fetchall())
    async with saver.lock:
        async with saver.conn.execute(sql, params) as cur:
            return _rows_to_threads(await cur.fetchall())


def _memory_ids(saver, thread: str, prefix: str) -> list[str]:
    return sorted(cid for cid in saver.storage.get(thread, {}).get("", {}) if cid.startswith(prefix))


def _first_column(rows) -> list[str]:
    return [r["checkpoint_id"] if isinstance(r, dict) else r[0] for r in rows]


def checkpoint_ids(saver, thread: str, prefix: str) -> list[str]:
    """Ids of `thread`'s checkpoints that start with `prefix`, oldest first."""
    kind = backend(saver)
    if kind == "memory":
        return _memory_ids(saver, thread, prefix)
    if kind == "postgres":
        with saver.conn.connection() as conn:
            return _first_column(conn.execute(_IDS.format(p="%s"), (thread, _like(prefix))).fetchall())
    with saver.cursor(transaction=False) as cur:
        return _first_column(cur.execute(_IDS.format(p="?"), (thread, _like(prefix))).fetchall())


async def acheckpoint_ids(saver, thread: str, prefix: str) -> list[str]:
    kind = backend(saver)
    if kind == "memory":
        return _memory_ids(saver, thread, prefix)
    if kind == "postgres":
        async with saver.conn.connection() as conn:
            return _first_column(await (await conn.execute(_IDS.format(p="%s"), (thread, _like(prefix)))).fetchall())
    async with saver.lock:
        async with saver.conn.execute(_IDS.format(p="?"), (thread, _like(prefix))) as cur:
            return _first_column(await cur.fetchall())


def _memory_links(saver, thread: str) -> dict[str, str | None]:
    return {cid: value[2] for cid, value in saver.storage.get(thread, {}).get("", {}).items()}


def _links(rows) -> dict[str, str | None]:
    return {(r["checkpoint_id"] if isinstance(r, dict) else r[0]):
            (r["parent_checkpoint_id"] if isinstance(r, dict) else r[1]) for r in rows}


def checkpoint_links(saver, thread: str) -> dict[str, str | None]:
    """{checkpoint id: parent id} of every checkpoint of `thread`: its whole shape, without one value."""
    kind = backend(saver)
    if kind == "memory":
        return _memory_links(saver, thread)
    if kind == "postgres":
        with saver.conn.connection() as conn:
            return _links(conn.execute(_LINKS.format(p="%s"), (thread,)).fetchall())
    with saver.cursor(transaction=False) as cur:
        return _links(cur.execute(_LINKS.format(p="?"), (thread,)).fetchall())


async def acheckpoint_links(saver, thread: str) -> dict[str, str | None]:
    kind = backend(saver)
    if kind == "memory":
        return _memory_links(saver, thread)
    if kind == "postgres":
        async with saver.conn.connection() as conn:
            return _links(await (await conn.execute(_LINKS.format(p="%s"), (thread,))).fetchall())
    async with saver.lock:
        async with saver.conn.execute(_LINKS.format(p="?"), (thread,)) as cur:
            return _links(await cur.fetchall())


def file_bytes(path: str | None) -> int | None:
    """Bytes a SQLite database takes on disk: its file and its WAL, where commits wait until they are copied
    back (savers.sqlite.WalCopier, WAL_KEEP_BYTES: ~16 MB at most while a run writes)."""
    if path is None:
        return None
    wal = Path(f"{path}-wal")
    return Path(path).stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def database_file(saver) -> str | None:
    """The SQLite file behind a saver, or None for other backends."""
    if backend(saver) != "sqlite":
        return None
    with saver.cursor(transaction=False) as cur:
        row = next((r for r in cur.execute("PRAGMA database_list").fetchall() if r[1] == "main"), None)
    return row[2] if row and row[2] else None


def reclaim_space(saver) -> None:
    """Give freed pages back to the file system after rows were deleted (SQLite; Postgres autovacuums).

    The first time this turns on incremental auto-vacuum, which takes one full VACUUM; from then on each
    call frees only what is free, without rewriting the file."""
    if backend(saver) != "sqlite":
        return
    with saver.lock:
        conn = saver.conn
        conn.commit()
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
        else:
            conn.execute("PRAGMA incremental_vacuum")
        # Busy while the saver's WalCopier copies beside the saver's writes (it does so outside this lock): then
        # again, until it is done - else the WAL, holding a whole VACUUM, stays the size of the database.
        for _ in range(100):
            if conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0:
                break
            time.sleep(0.05)
        conn.commit()


async def adatabase_file(saver) -> str | None:
    """database_file for an async saver."""
    if backend(saver) != "sqlite":
        return None
    async with saver.conn.execute("PRAGMA database_list") as cur:
        row = next((r for r in await cur.fetchall() if r[1] == "main"), None)
    return row[2] if row and row[2] else None


async def areclaim_space(saver) -> None:
    """reclaim_space for an async saver."""
    if backend(saver) != "sqlite":
        return
    async with saver.lock:
        conn = saver.conn
        async with conn.execute("PRAGMA auto_vacuum") as cur:
            incremental = (await cur.fetchone())[0] == 2
        if not incremental:
            await conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            await conn.execute("VACUUM")
        else:
            await conn.execute("PRAGMA incremental_vacuum")
        for _ in range(100):  # busy while the saver's WalCopier copies (reclaim_space)
            async with conn.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
                if (await cur.fetchone())[0] == 0:
                    break
            await asyncio.sleep(0.05)
