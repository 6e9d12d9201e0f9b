"""SQLite savers (sync and async) on top of langgraph-checkpoint-sqlite, opened with safe, fast settings.

WAL with synchronous=NORMAL is durable against a process crash (SIGKILL); only power loss can drop the last commit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import cached_property
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.checkpoint.sqlite.utils import search_where

from savers.cache import AsyncSqliteCache, SqliteCache
from savers.compact import DELTA, MSGPACK, Chains, Decoder, MissingBase, delta_base, split_values
from savers.errors import StorageError
from savers.migrations import amigrate_sqlite, migrate_sqlite
from savers.threads import no_checkpoint, prune_args, refuse_delta_threads, target_exists

# Readers (e.g. `history` while a run writes) wait this long for a lock instead of failing at once.
BUSY_TIMEOUT_MS = 10_000
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
)


CHECKPOINT_TYPE = "agent1"  # zlib-compressed msgpack of a checkpoint whose big values are in agent_blobs
_COLUMNS = "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata"
SELECT_ONE = f"SELECT {_COLUMNS} FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?"
SELECT_LATEST = (f"SELECT {_COLUMNS} FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
                 "ORDER BY checkpoint_id DESC LIMIT 1")
SELECT_WRITES = ("SELECT task_id, channel, type, value, task_path, idx FROM writes "
                 "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?")
# The blobs asked for (a JSON array of [channel, version]) and every base their deltas extend, transitively.
SELECT_BLOBS = """
WITH RECURSIVE wanted(channel, version) AS (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)
), chain(channel, version, type, blob, base) AS (
    SELECT b.channel, b.version, b.type, b.blob, b.base FROM wanted w CROSS JOIN agent_blobs b
    ON b.thread_id = ? AND b.checkpoint_ns = ? AND b.channel = w.channel AND b.version = w.version
    UNION ALL
    SELECT b.channel, b.version, b.type, b.blob, b.base FROM chain c CROSS JOIN agent_blobs b
    ON b.thread_id = ? AND b.checkpoint_ns = ? AND b.channel = c.channel AND b.version = c.base
)
SELECT channel, version, type, blob FROM chain"""
INSERT_BLOB = ("INSERT OR IGNORE INTO agent_blobs (thread_id, checkpoint_ns, channel, version, type, blob, base) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)")
INSERT_CHECKPOINT = f"INSERT OR REPLACE INTO checkpoints ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_WRITE_COLUMNS = "thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, value"
UPSERT_WRITES = f"INSERT OR REPLACE INTO writes ({_WRITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_WRITES = f"INSERT OR IGNORE INTO writes ({_WRITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
TABLES = ("checkpoints", "writes", "agent_blobs")
DELETE_THREADS = [f"DELETE FROM {t} WHERE thread_id IN (SELECT value FROM json_each(?))" for t in TABLES]
_IN_RUNS = "json_extract(CAST({m} AS TEXT), '$.run_id') IN (SELECT value FROM json_each(?))"
DELETE_RUNS = (
    "DELETE FROM writes WHERE EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = writes.thread_id "
    "AND c.checkpoint_ns = writes.checkpoint_ns AND c.checkpoint_id = writes.checkpoint_id AND "
    + _IN_RUNS.format(m="c.metadata") + ")",
    "DELETE FROM checkpoints WHERE " + _IN_RUNS.format(m="metadata"),
)
SELECT_DELTA_THREADS = ("SELECT DISTINCT thread_id FROM checkpoints WHERE thread_id IN (SELECT value FROM json_each(?)) "
                        "AND json_extract(CAST(metadata AS TEXT), '$.counters_since_delta_snapshot') IS NOT NULL")
SELECT_HEADS = (f"SELECT {_COLUMNS} FROM checkpoints c WHERE thread_id = ? AND checkpoint_id = "
                "(SELECT MAX(checkpoint_id) FROM checkpoints k WHERE k.thread_id = c.thread_id "
                "AND k.checkpoint_ns = c.checkpoint_ns)")
SELECT_ALL_WRITES = f"SELECT {_WRITE_COLUMNS} FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?"
EXISTS_THREAD = "SELECT 1 FROM checkpoints WHERE thread_id = ? LIMIT 1"
# A lineage: a root-namespace checkpoint and its ancestors, by parent links (ids sort by time only per process).
SELECT_LINEAGE = """
WITH RECURSIVE lineage(checkpoint_id, parent) AS (
    SELECT checkpoint_id, parent_checkpoint_id FROM checkpoints
    WHERE thread_id = ? AND checkpoint_ns = '' AND checkpoint_id = ?
    UNION
    SELECT c.checkpoint_id, c.parent_checkpoint_id FROM lineage l CROSS JOIN checkpoints c
    ON c.thread_id = ? AND c.checkpoint_ns = '' AND c.checkpoint_id = l.parent
)
SELECT checkpoint_id FROM lineage"""
_WRITE_REST = _WRITE_COLUMNS.split(", ", 1)[1]
_COLUMNS_REST = _COLUMNS.split(", ", 1)[1]
# Checkpoints of a lineage: its root-namespace ids (1st array), and subgraph checkpoints made during the steps
# from them (2nd array: the same ids but the last, whose next step is not part of the lineage).
_IN_LINEAGE = ("((c.checkpoint_ns = '' AND c.checkpoint_id IN (SELECT value FROM json_each(?))) OR "
               "(c.checkpoint_ns <> '' AND json_extract(CAST(c.metadata AS TEXT), '$.parents.\"\"') "
               "IN (SELECT value FROM json_each(?))))")
COPY_ALL = {
    "checkpoints": f"INSERT INTO checkpoints ({_COLUMNS}) SELECT ?, {_COLUMNS_REST} FROM checkpoints WHERE thread_id = ?",
    "writes": f"INSERT INTO writes ({_WRITE_COLUMNS}) SELECT ?, {_WRITE_REST} FROM writes WHERE thread_id = ?",
    "agent_blobs": "INSERT INTO agent_blobs (thread_id, checkpoint_ns, channel, version, type, blob, base) "
                   "SELECT ?, checkpoint_ns, channel, version, type, blob, base FROM agent_blobs WHERE thread_id = ?",
}
COPY_LINEAGE_CHECKPOINTS = (f"INSERT INTO checkpoints ({_COLUMNS}) SELECT ?, {_COLUMNS_REST} FROM checkpoints c "
                            f"WHERE c.thread_id = ? AND {_IN_LINEAGE}")
# The lineage's writes, except those of its last checkpoint: they belong to the step after it.
COPY_LINEAGE_WRITES = (
    f"INSERT INTO writes ({_WRITE_COLUMNS}) SELECT ?, {_WRITE_REST} FROM writes w "
    "WHERE w.thread_id = ? AND NOT (w.checkpoint_ns = '' AND w.checkpoint_id = ?) AND EXISTS (SELECT 1 FROM "
    "checkpoints c WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns "
    f"AND c.checkpoint_id = w.checkpoint_id AND {_IN_LINEAGE})"
)


def _params(config) -> tuple[str, str]:
    configurable = config["configurable"]
    return str(configurable["thread_id"]), configurable.get("checkpoint_ns", "")


class _Rows:
    """Rows in and out of the SQLite tables, shared by the sync and async savers (which only do the I/O)."""

    serde: Any

    @cached_property
    def chains(self) -> Chains:
        return Chains()

    # -- writing ---------------------------------------------------------------------------------------

    def _checkpoint_rows(self, config, checkpoint, metadata, new_versions, *, full: bool = False):
        """(checkpoint row, blob rows, what to remember after commit) for one checkpoint."""
        thread_id, ns = str(config["configurable"]["thread_id"]), config["configurable"]["checkpoint_ns"]
        inline, apart = split_values(checkpoint["channel_values"])
        encoded = self.chains.encode_checkpoint(self.serde, thread_id, ns, apart, checkpoint["channel_versions"],
                                                new_versions, full=full)
        blobs = [(thread_id, ns, channel, str(checkpoint["channel_versions"][channel]), b.type, b.data, b.base)
                 for channel, b in encoded.blobs.items()]
        compact = {**checkpoint, "channel_values": inline, "stored": sorted(apart)}
        type_, data = self.serde.dumps_typed(compact)
        type_, data = (CHECKPOINT_TYPE, zlib.compress(data, 1)) if type_ == MSGPACK else (
            f"{CHECKPOINT_TYPE}+{type_}", data)
        meta = json.dumps(get_checkpoint_metadata(config, metadata), ensure_ascii=False).encode("utf-8", "ignore")
        row = (thread_id, ns, checkpoint["id"], config["configurable"].get("checkpoint_id"), type_, data, meta)
        return row, blobs, encoded

    def _write_rows(self, config, writes, task_id: str, task_path: str) -> tuple[str, list[tuple]]:
        thread_id, ns = str(config["configurable"]["thread_id"]), str(config["configurable"]["checkpoint_ns"])
        checkpoint_id = str(config["configurable"]["checkpoint_id"])
        query = UPSERT_WRITES if all(w[0] in WRITES_IDX_MAP for w in writes) else INSERT_WRITES
        rows = []
        for idx, (channel, value) in enumerate(writes):
            blob = self.chains.encode_write(self.serde, thread_id, ns, channel, value)
            rows.append((thread_id, ns, checkpoint_id, task_id, task_path, WRITES_IDX_MAP.get(channel, idx),
                         channel, blob.type, blob.data))
        return query, rows

    @staticmethod
    def _next_config(config, checkpoint) -> RunnableConfig:
        configurable = config["configurable"]
        return {"configurable": {"thread_id": configurable["thread_id"], "checkpoint_ns": configurable["checkpoint_ns"],
                                 "checkpoint_id": checkpoint["id"]}}

    # -- reading ---------------------------------------------------------------------------------------

    def _unpack(self, row) -> tuple[dict, list[str]]:
        """A checkpoint row's checkpoint (values stored apart not yet in it) and the channels stored apart."""
        type_, data = row[4], row[5]
        if type_ == CHECKPOINT_TYPE:
            checkpoint = self.serde.loads_typed((MSGPACK, zlib.decompress(data)))
        elif type_.startswith(CHECKPOINT_TYPE + "+"):
            checkpoint = self.serde.loads_typed((type_[len(CHECKPOINT_TYPE) + 1:], data))
        else:  # written by the official saver: every value inline
            return self.serde.loads_typed((type_, data)), []
        return checkpoint, checkpoint.pop("stored", [])

    @staticmethod
    def _wanted(checkpoint: dict, stored: list[str], writes) -> list[tuple[str, str]]:
        """The blobs to fetch for a checkpoint: its values stored apart, and the bases of its writes."""
        versions = checkpoint["channel_versions"]
        keys = [(channel, str(versions[channel])) for channel in stored if channel in versions]
        keys += [(w[1], base) for w in writes if (base := delta_base(w[2], w[3])) is not None]
        return keys

    def _tuple(self, row, checkpoint: dict, stored: list[str], writes, blobs: dict, *, seed: bool) -> CheckpointTuple:
        thread_id, ns, checkpoint_id, parent_id = row[0], row[1], row[2], row[3]
        decoder = Decoder(self.serde, blobs)
        versions = checkpoint["channel_versions"]
        tips = {}
        try:
            for channel in stored:
                key = (channel, str(versions.get(channel)))
                if key in blobs:
                    checkpoint["channel_values"][channel] = decoder.value(channel, *blobs[key])
                    if seed and (tip := decoder.list_tip(channel, key[1], *blobs[key])):
                        tips[channel] = tip
            pending = [(task_id, channel, decoder.value(channel, type_, value))
                       for task_id, channel, type_, value, _, _ in
                       sorted(writes, key=lambda w: writes_sort_key(w[4], w[0], w[5]))]
        except MissingBase as exc:
            raise StorageError(f"checkpoint {checkpoint_id} of thread '{thread_id}' cannot be read: {exc} "
                               "(the thread was deleted or pruned while a run wrote to it)") from None
        if seed:
            self.chains.seed(thread_id, ns, blobs, tips)
        metadata = json.loads(row[6]) if row[6] is not None else {}
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}
        parent = ({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent_id}}
                  if parent_id else None)
        return CheckpointTuple(config, checkpoint, metadata, parent, pending)

    @staticmethod
    def _blob_params(thread_id: str, ns: str, keys) -> tuple:
        return json.dumps(keys), thread_id, ns, thread_id, ns

    @staticmethod
    def _blob_map(rows) -> dict:
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    def _full_writes(self, thread_id: str, rows, blobs: dict) -> list[tuple]:
        """Write rows with deltas replaced by whole values (for a checkpoint whose bases will be deleted)."""
        decoder = Decoder(self.serde, blobs)
        full = []
        for row in rows:
            *key, channel, type_, value = row
            if type_ == DELTA:
                type_, value = self.serde.dumps_typed(decoder.value(channel, type_, value))
            full.append((*key, channel, type_, value))
        return full

    @staticmethod
    def _list_query(config, filter, before, limit) -> tuple[str, tuple]:
        where, params = search_where(config, filter, before)
        query = f"SELECT {_COLUMNS} FROM checkpoints {where} ORDER BY checkpoint_id DESC"
        if limit is not None:
            query += " LIMIT ?"
            params = (*params, int(limit))
        return query, tuple(params)


class Sqlite(_Rows, SqliteSaver):
    """The official SqliteSaver with compact storage (savers.compact), every capability of LangGraph's saver
    interface (copy_thread, delete_for_runs, prune), our tables (migrated in setup) and the reply cache."""

    _agent_ready = False

    def setup(self) -> None:
        super().setup()
        if not self._agent_ready:
            migrate_sqlite(self.conn)
            self.conn.commit()
            self._agent_ready = True

    @cached_property
    def response_cache(self) -> SqliteCache:
        return SqliteCache(self.conn, self.lock)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """One transaction under the saver's lock: committed on success, rolled back on any error."""
        with self.lock:
            self.setup()
            cur = self.conn.cursor()
            try:
                yield cur
                self.conn.commit()
            except BaseException:
                self.conn.rollback()
                raise
            finally:
                cur.close()

    def _blobs(self, cur, thread_id: str, ns: str, keys) -> dict:
        if not keys:
            return {}
        return self._blob_map(cur.execute(SELECT_BLOBS, self._blob_params(thread_id, ns, keys)).fetchall())

    def _read(self, cur, row, *, seed: bool) -> CheckpointTuple:
        checkpoint, stored = self._unpack(row)
        writes = cur.execute(SELECT_WRITES, row[:3]).fetchall()
        blobs = self._blobs(cur, row[0], row[1], self._wanted(checkpoint, stored, writes))
        return self._tuple(row, checkpoint, stored, writes, blobs, seed=seed)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id, ns = _params(config)
        with self._transaction() as cur:
            if checkpoint_id := get_checkpoint_id(config):
                row = cur.execute(SELECT_ONE, (thread_id, ns, checkpoint_id)).fetchone()
            else:
                row = cur.execute(SELECT_LATEST, (thread_id, ns)).fetchone()
            return self._read(cur, row, seed=True) if row else None

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        query, params = self._list_query(config, filter, before, limit)
        with self._transaction() as cur:
            rows = cur.execute(query, params).fetchall()
        for row in rows:  # the lock is not held while the caller works on a tuple
            with self._transaction() as cur:
                tup = self._read(cur, row, seed=False)
            yield tup

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        thread_id, ns = str(config["configurable"]["thread_id"]), config["configurable"]["checkpoint_ns"]
        # Encoded before taking the lock, so it overlaps another call's I/O (puts of a thread come in order).
        row, blobs, encoded = self._checkpoint_rows(config, checkpoint, metadata, new_versions)
        with self._transaction() as cur:
            if blobs:
                cur.executemany(INSERT_BLOB, blobs)
            cur.execute(INSERT_CHECKPOINT, row)
        self.chains.remember(thread_id, ns, encoded)
        return self._next_config(config, checkpoint)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        query, rows = self._write_rows(config, writes, task_id, task_path)
        with self._transaction() as cur:
            cur.executemany(query, rows)

    def delete_thread(self, thread_id: str) -> None:
        with self._transaction() as cur:
            for sql in DELETE_THREADS:
                cur.execute(sql, (json.dumps([str(thread_id)]),))
        self.chains.forget([thread_id])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) made by these runs. Their stored values stay, since
        checkpoints of other runs may share them; delete_thread and prune remove them with the thread."""
        if not run_ids:
            return
        with self._transaction() as cur:
            for sql in DELETE_RUNS:
                cur.execute(sql, (json.dumps([str(r) for r in run_ids]),))

    def copy_thread(self, source_thread_id: str, target_thread_id: str, *, up_to: str | None = None) -> None:
        """Copy a thread, or with `up_to` one lineage of it: that checkpoint, its ancestors, their pending
        writes (except the writes of `up_to` itself, which belong to the step after it), the subgraph
        checkpoints under them, and the values they store. Checkpoint ids stay the same."""
        source, target = str(source_thread_id), str(target_thread_id)
        with self._transaction() as cur:
            if cur.execute(EXISTS_THREAD, (target,)).fetchone():
                raise target_exists(target)
            if up_to is None:
                for sql in COPY_ALL.values():
                    cur.execute(sql, (target, source))
            else:
                ids = [r[0] for r in cur.execute(SELECT_LINEAGE, (source, up_to, source)).fetchall()]
                if not ids:
                    raise no_checkpoint(source, up_to)
                root, sub = json.dumps(ids), json.dumps([i for i in ids if i != up_to])
                cur.execute(COPY_LINEAGE_CHECKPOINTS, (target, source, root, sub))
                cur.execute(COPY_LINEAGE_WRITES, (target, source, up_to, root, sub))
                cur.execute(COPY_ALL["agent_blobs"], (target, source))
        self.chains.forget([target])

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """"delete" removes the threads; "keep_latest" keeps each namespace's latest checkpoint (with its
        pending writes, its values stored whole, and no parent) and deletes the rest. Refuses threads
        that use a DeltaChannel, whose values are rebuilt from older checkpoints."""
        thread_ids = prune_args(thread_ids, strategy)
        if not thread_ids:
            return
        with self._transaction() as cur:
            if strategy == "keep_latest":
                refuse_delta_threads([r[0] for r in cur.execute(SELECT_DELTA_THREADS, (json.dumps(thread_ids),))])
                kept = [self._kept(cur, thread_id) for thread_id in thread_ids]
            for sql in DELETE_THREADS:
                cur.execute(sql, (json.dumps(thread_ids),))
            if strategy == "keep_latest":
                for heads in kept:
                    for checkpoint_row, blob_rows, write_rows in heads:
                        cur.executemany(INSERT_BLOB, blob_rows)
                        cur.execute(INSERT_CHECKPOINT, checkpoint_row)
                        cur.executemany(INSERT_WRITES, write_rows)
        self.chains.forget(thread_ids)

    def _kept(self, cur, thread_id: str) -> list[tuple]:
        """Rows that keep each namespace's latest checkpoint of a thread readable on their own."""
        heads = []
        for row in cur.execute(SELECT_HEADS, (thread_id,)).fetchall():
            tup = self._read(cur, row, seed=False)
            raw_writes = cur.execute(SELECT_ALL_WRITES, row[:3]).fetchall()
            bases = [(w[6], base) for w in raw_writes if (base := delta_base(w[7], w[8])) is not None]
            writes = self._full_writes(thread_id, raw_writes, self._blobs(cur, row[0], row[1], bases))
            values = tup.checkpoint["channel_values"]
            checkpoint, stored = self._unpack(row)
            encoded = self.chains.encode_checkpoint(
                self.serde, row[0], row[1], {c: values[c] for c in stored if c in values},
                checkpoint["channel_versions"], {}, full=True)
            blobs = [(row[0], row[1], c, str(checkpoint["channel_versions"][c]), b.type, b.data, None)
                     for c, b in encoded.blobs.items()]
            heads.append(((*row[:3], None, *row[4:]), blobs, writes))
        return heads

    def get_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]):
        # The official fast path reads the official row format; ours walks get_tuple, which reads ours.
        return BaseCheckpointSaver.get_delta_channel_history(self, config=config, channels=channels)


class AsyncSqlite(_Rows, AsyncSqliteSaver):
    """The async twin of Sqlite, on aiosqlite."""

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

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Cursor]:
        await self.setup()
        async with self.lock:
            cur = await self.conn.cursor()
            try:
                yield cur
                await self.conn.commit()
            except BaseException:
                await self.conn.rollback()
                raise
            finally:
                await cur.close()

    async def _blobs(self, cur, thread_id: str, ns: str, keys) -> dict:
        if not keys:
            return {}
        await cur.execute(SELECT_BLOBS, self._blob_params(thread_id, ns, keys))
        return self._blob_map(await cur.fetchall())

    async def _read(self, cur, row, *, seed: bool) -> CheckpointTuple:
        checkpoint, stored = self._unpack(row)
        await cur.execute(SELECT_WRITES, tuple(row[:3]))
        writes = await cur.fetchall()
        blobs = await self._blobs(cur, row[0], row[1], self._wanted(checkpoint, stored, writes))
        return self._tuple(row, checkpoint, stored, writes, blobs, seed=seed)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id, ns = _params(config)
        async with self._transaction() as cur:
            if checkpoint_id := get_checkpoint_id(config):
                await cur.execute(SELECT_ONE, (thread_id, ns, checkpoint_id))
            else:
                await cur.execute(SELECT_LATEST, (thread_id, ns))
            row = await cur.fetchone()
            return await self._read(cur, row, seed=True) if row else None

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        query, params = self._list_query(config, filter, before, limit)
        async with self._transaction() as cur:
            await cur.execute(query, params)
            rows = await cur.fetchall()
        for row in rows:
            async with self._transaction() as cur:
                tup = await self._read(cur, row, seed=False)
            yield tup

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        thread_id, ns = str(config["configurable"]["thread_id"]), config["configurable"]["checkpoint_ns"]
        row, blobs, encoded = self._checkpoint_rows(config, checkpoint, metadata, new_versions)
        async with self._transaction() as cur:
            if blobs:
                await cur.executemany(INSERT_BLOB, blobs)
            await cur.execute(INSERT_CHECKPOINT, row)
        self.chains.remember(thread_id, ns, encoded)
        return self._next_config(config, checkpoint)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        query, rows = self._write_rows(config, writes, task_id, task_path)
        async with self._transaction() as cur:
            await cur.executemany(query, rows)

    async def adelete_thread(self, thread_id: str) -> None:
        async with self._transaction() as cur:
            for sql in DELETE_THREADS:
                await cur.execute(sql, (json.dumps([str(thread_id)]),))
        self.chains.forget([thread_id])

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        async with self._transaction() as cur:
            for sql in DELETE_RUNS:
                await cur.execute(sql, (json.dumps([str(r) for r in run_ids]),))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str, *, up_to: str | None = None) -> None:
        source, target = str(source_thread_id), str(target_thread_id)
        async with self._transaction() as cur:
            await cur.execute(EXISTS_THREAD, (target,))
            if await cur.fetchone():
                raise target_exists(target)
            if up_to is None:
                for sql in COPY_ALL.values():
                    await cur.execute(sql, (target, source))
            else:
                await cur.execute(SELECT_LINEAGE, (source, up_to, source))
                ids = [r[0] for r in await cur.fetchall()]
                if not ids:
                    raise no_checkpoint(source, up_to)
                root, sub = json.dumps(ids), json.dumps([i for i in ids if i != up_to])
                await cur.execute(COPY_LINEAGE_CHECKPOINTS, (target, source, root, sub))
                await cur.execute(COPY_LINEAGE_WRITES, (target, source, up_to, root, sub))
                await cur.execute(COPY_ALL["agent_blobs"], (target, source))
        self.chains.forget([target])

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        thread_ids = prune_args(thread_ids, strategy)
        if not thread_ids:
            return
        async with self._transaction() as cur:
            if strategy == "keep_latest":
                await cur.execute(SELECT_DELTA_THREADS, (json.dumps(thread_ids),))
                refuse_delta_threads([r[0] for r in await cur.fetchall()])
                kept = [await self._kept(cur, thread_id) for thread_id in thread_ids]
            for sql in DELETE_THREADS:
                await cur.execute(sql, (json.dumps(thread_ids),))
            if strategy == "keep_latest":
                for heads in kept:
                    for checkpoint_row, blob_rows, write_rows in heads:
                        await cur.executemany(INSERT_BLOB, blob_rows)
                        await cur.execute(INSERT_CHECKPOINT, checkpoint_row)
                        await cur.executemany(INSERT_WRITES, write_rows)
        self.chains.forget(thread_ids)

    async def _kept(self, cur, thread_id: str) -> list[tuple]:
        await cur.execute(SELECT_HEADS, (thread_id,))
        heads = []
        for row in await cur.fetchall():
            tup = await self._read(cur, row, seed=False)
            await cur.execute(SELECT_ALL_WRITES, tuple(row[:3]))
            raw_writes = await cur.fetchall()
            bases = [(w[6], base) for w in raw_writes if (base := delta_base(w[7], w[8])) is not None]
            writes = self._full_writes(thread_id, raw_writes, await self._blobs(cur, row[0], row[1], bases))
            values = tup.checkpoint["channel_values"]
            checkpoint, stored = self._unpack(row)
            encoded = self.chains.encode_checkpoint(
                self.serde, row[0], row[1], {c: values[c] for c in stored if c in values},
                checkpoint["channel_versions"], {}, full=True)
            blobs = [(row[0], row[1], c, str(checkpoint["channel_versions"][c]), b.type, b.data, None)
                     for c, b in encoded.blobs.items()]
            heads.append(((*row[:3], None, *row[4:]), blobs, writes))
        return heads

    def copy_thread(self, source_thread_id: str, target_thread_id: str, *, up_to: str | None = None) -> None:
        self._from_thread(self.acopy_thread(source_thread_id, target_thread_id, up_to=up_to))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._from_thread(self.adelete_for_runs(run_ids))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._from_thread(self.aprune(thread_ids, strategy=strategy))

    def _from_thread(self, coro):
        """Like the official sync wrappers: run on the saver's loop, from another thread only."""
        try:
            if asyncio.get_running_loop() is self.loop:
                coro.close()
                raise asyncio.InvalidStateError(
                    "Synchronous calls to AsyncSqlite are only allowed from a different thread; await the "
                    "async method (acopy_thread, adelete_for_runs, aprune) instead.")
        except RuntimeError:
            pass
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def aget_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]):
        return await BaseCheckpointSaver.aget_delta_channel_history(self, config=config, channels=channels)


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
