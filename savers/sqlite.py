"""SQLite savers (sync and async) on top of langgraph-checkpoint-sqlite, opened with safe, fast settings.

WAL with synchronous=NORMAL is durable against a process crash (SIGKILL); only power loss can drop the last commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import cached_property, lru_cache
from typing import Any

import orjson
import ormsgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
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

from savers.cache import AsyncSqliteCache, SqliteCache, in_aiosqlite_thread
from savers.compact import (
    decode_pending,
    unreadable,
    next_config,
    packed_write_params,
    unseal_writes,
    write_params,
    WRITE_PARAMS,
    DELTA,
    MSGPACK,
    Chains,
    Decoder,
    Encoded,
    MissingBase,
    delta_base,
    dump_metadata,
    inner_of,
    matches,
    pack_versions,
    seal,
    special,
    context,
    copy_metadata,
    dump,
    encrypted,
    load,
    reseal,
    reseal_metadata,
    seal_metadata,
    split_filter,
    split_values,
    unpack_versions,
    unseal,
    unseal_metadata,
)
from savers.errors import StorageError
from savers.keyring import arun_plan, run_plan, serde_plan
from savers.migrations import amigrate_sqlite, migrate_sqlite
from savers.options import SaverOptions
from savers.serde import Serializer, saver_with_allowlist
from savers.threads import (
    SyncWrappers,
    no_checkpoint,
    prune_args,
    refuse_delta_threads,
    target_exists,
    text_thread,
    thread_deleted,
    writer_conflict,
)

# Readers (e.g. `history` while a run writes) wait this long for a lock instead of failing at once.
BUSY_TIMEOUT_MS = 10_000
# WAL pages written before a commit copies them back into the database file. At SQLite's default, 1,000
# (4 MB), the pages a run rewrites at every step (the b-trees' upper levels, the current leaves) were copied
# back every ~125 steps, with two fsyncs each time; at 4,000 a quarter as often: over all rounds of
# bench/savers.py's graph (in-graph A/B, 40-50 rounds) a step took 1.28-1.30x InMemorySaver's instead of
# 1.31-1.34x. The copy is a longer pause then: up to ~20 ms in one call every ~500 steps (5 ms before). The
# WAL file stays at most that size (journal_size_limit; ~16 MB). Durability is unchanged: every commit is in
# the WAL, which the next open after a crash reads.
WAL_AUTOCHECKPOINT_PAGES = 4_000
WAL_KEEP_BYTES = 16 << 20
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}",
    f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}",
)
# The async saver's hot path - aput and aput_writes, one short INSERT each - runs on the event loop's own
# thread, on a connection of its own (AsyncSqlite._write): a hop to aiosqlite's thread and back costs more
# than the INSERT (bench/savers.py's graph, in-graph A/B over 30 rounds: 1.46-1.51x InMemorySaver ->
# 1.20-1.30x; bench/savers.py at 5194052: 1.23x, the stock async saver 2.27x). So that the loop never waits
# on the database, that connection does not wait for a lock (opened with timeout 0: the write then goes to
# aiosqlite's thread, which waits as every other call does) and does not copy the WAL back itself (a copy
# can take ~40 ms). Nor does the sync saver's connection: for both, every INLINE_CHECKPOINT_COMMITS of these
# commits (~3-4 pages each, so about SQLite's own 4,000-page interval above) a WalCopier's thread copies it
# back while the saver goes on writing.
#
# Unless the WAL outgrows INLINE_AUTOCHECKPOINT_PAGES: then these connections copy it back after each commit,
# as SQLite's autocheckpoint does. The copier cannot hold off another process's writes, so with two processes
# writing at once its copies rarely leave the WAL all copied, and only a WAL all copied starts over: it grew
# without bound (2 processes running bench/savers.py's graph on one file: 432 MB after 40 s, against 16 MB with
# SQLite's autocheckpoint). Past that size every commit copies back what the last copy left, a few pages, so
# one soon leaves none and the WAL starts over - SQLite's own way out, at 4x the size the copier keeps it under
# when alone (tests/test_savers.py).
INLINE_AUTOCHECKPOINT_PAGES = 4 * WAL_AUTOCHECKPOINT_PAGES
INLINE_PRAGMAS = ("PRAGMA synchronous=NORMAL", f"PRAGMA wal_autocheckpoint={INLINE_AUTOCHECKPOINT_PAGES}",
                  f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
INLINE_CHECKPOINT_COMMITS = 1_000
# WalCopier: copies beside the writes before the one under their lock, and how short a copy says it caught up.
CATCH_UP_COPIES = 6
CAUGHT_UP_S = 0.002


# A checkpoint row of ours is msgpack of the checkpoint with packed versions (savers.compact), its small values
# inline, and two more keys: "values", the values this row stores apart ({channel: [type, bytes]}), and
# "apart", where each value kept apart is ({channel: id of the checkpoint row that stores it, None: this one}).
# So a put is one INSERT, and a value is stored once, in the row of the checkpoint that first had it.
CHECKPOINT_TYPE = "agent3"
_COLUMNS = "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata"
_WRITE_COLUMNS = "thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, value"
SELECT_ONE = f"SELECT {_COLUMNS} FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?"
SELECT_LATEST = (f"SELECT {_COLUMNS} FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
                 "ORDER BY checkpoint_id DESC LIMIT 1")
# A checkpoint's writes are rows of `writes`, and (most of them) carried by its child's row: a step's writes,
# held until its checkpoint is put (HeldWrites), go into that checkpoint's row as `parent_writes` - the writes
# of its parent - instead of rows of their own (HeldWrites.put_row). One b-tree row a step instead of two:
# 7.16 -> 4.12 WAL frames a step, and one statement fewer. In-graph A/B (bench/savers.py's graph, 20-30
# interleaved rounds of 2,000-3,000 threads' steps): sync 1.194 -> 1.179x and 1.255 -> 1.192x InMemorySaver,
# async 1.198 -> 1.164x; the same writes UPDATEd into the parent's own row instead (no child lookups when
# reading) gained half as much, 1.271 -> 1.240x: an UPDATE is one statement more. Only a child whose id sorts
# after its parent's carries writes, so a reader finds them among the checkpoints after it: none for the
# newest (one index seek), every later row of the namespace for an old one (no index on the parent: that
# would be the b-tree this saves). A carried write reads back as the row it stands for, before a row of
# `writes` with the same key (task, idx) - it was stored first (_unfold). Each read of writes below reads both.
SELECT_WRITES = ("SELECT task_id, channel, type, value, task_path, idx FROM writes "
                 "WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND checkpoint_id = ?3 "
                 "UNION ALL SELECT NULL, NULL, NULL, parent_writes, NULL, NULL FROM checkpoints "
                 "WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND checkpoint_id > ?3 AND parent_checkpoint_id = ?3 "
                 "AND parent_writes IS NOT NULL")
SELECT_LISTED_WRITES = ("SELECT checkpoint_id, task_id, channel, type, value, task_path, idx FROM writes "
                        "WHERE thread_id = ?1 AND checkpoint_ns = ?2 "
                        "AND checkpoint_id IN (SELECT value FROM json_each(?3)) "
                        "UNION ALL SELECT parent_checkpoint_id, NULL, NULL, NULL, parent_writes, NULL, NULL "
                        "FROM checkpoints WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND checkpoint_id > ?4 "
                        "AND parent_writes IS NOT NULL AND parent_checkpoint_id IN (SELECT value FROM json_each(?3))")
# Rows that store values other checkpoints refer to; and values kept after their row was deleted
# (agent_blobs, keyed by the id of the row they came from: delete_for_runs keeps them there).
SELECT_ROWS = ("SELECT checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
               "AND checkpoint_id IN (SELECT value FROM json_each(?))")
SELECT_KEPT = ("SELECT channel, version, type, blob FROM agent_blobs WHERE thread_id = ? AND checkpoint_ns = ? "
               "AND version IN (SELECT value FROM json_each(?))")
INSERT_KEPT = ("INSERT OR IGNORE INTO agent_blobs (thread_id, checkpoint_ns, channel, version, type, blob) "
               "VALUES (?, ?, ?, ?, ?, ?)")
# A whole row, as copies and prune write it: the columns and parent_writes.
INSERT_CHECKPOINT = f"INSERT INTO checkpoints ({_COLUMNS}, parent_writes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# A write naming a checkpoint of a deleted thread (savers/migrations.py agent_tombstones): parameters are
# the thread id and the checkpoint id the write names (for a put, its parent).
_DELETED = "SELECT 1 FROM agent_tombstones WHERE thread_id = ? AND ? <= last_checkpoint_id"
# put: an upsert (never REPLACE, which would delete the row it replaces and insert anew), unless the thread
# was deleted under the run.
# Not over a row that carries writes for another parent than the new one (_put_row makes them rows first).
_UPSERT = ("ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET "
           "parent_checkpoint_id = excluded.parent_checkpoint_id, type = excluded.type, "
           "checkpoint = excluded.checkpoint, metadata = excluded.metadata "
           "WHERE checkpoints.parent_writes IS NULL "
           "OR checkpoints.parent_checkpoint_id IS excluded.parent_checkpoint_id")
PUT_CHECKPOINT = (f"INSERT INTO checkpoints ({_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS ({_DELETED}) "
                  + _UPSERT)
# A run's next checkpoint (source "loop" or "input", with a parent; parameters ?1-?7 are the row's columns): also
# not stored when another writer already went on from the same parent - one writer per thread, kept by the
# database. SQLite runs the statement under its write lock, so the check and the insert are one step (Postgres
# keeps a unique index, agent_one_writer, for the same rule; here that index cost every put a third b-tree to
# write: bench/calls.py, same run, put 101 -> 84 us per step). The child is looked for among the first
# NEXT_ROWS checkpoints after its parent in the primary key: checkpoint ids grow with the clock of the one
# machine that holds the file, so the other writer's child comes right after the parent - at the head of a
# thread there is nothing after it (one index seek), and a caller that puts a thread newest first (as an export
# lists it) reads at most NEXT_ROWS rows per put instead of every newer one (1,000 checkpoints: 1.6 s -> 1.0 s).
ONE_WRITER_SOURCES = ("loop", "input")
NEXT_ROWS = 8
PUT_NEXT = (f"INSERT INTO checkpoints ({_COLUMNS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 "
            "WHERE NOT EXISTS (SELECT 1 FROM agent_tombstones WHERE thread_id = ?1 AND ?4 <= last_checkpoint_id) "
            "AND NOT EXISTS (SELECT 1 FROM (SELECT parent_checkpoint_id AS parent, metadata FROM checkpoints "
            "WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND checkpoint_id > ?4 AND checkpoint_id <> ?3 "
            f"ORDER BY checkpoint_id LIMIT {NEXT_ROWS}) WHERE parent = ?4 "
            "AND json_extract(CAST(metadata AS TEXT), '$.source') IN ('loop', 'input')) " + _UPSERT)
# ... carrying its parent's writes (?8: HeldWrites.put_row). Never an upsert: a row of that id already there
# keeps the writes it carries, and these are stored as rows of `writes` instead (_put_folded).
PUT_NEXT_FOLDED = (PUT_NEXT.replace(f"({_COLUMNS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 ",
                                    f"({_COLUMNS}, parent_writes) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 ")
                   .replace(_UPSERT, "ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO NOTHING"))
assert "?8" in PUT_NEXT_FOLDED and "DO NOTHING" in PUT_NEXT_FOLDED, "PUT_NEXT changed: build PUT_NEXT_FOLDED anew"
TOMBSTONE = ("INSERT INTO agent_tombstones (thread_id, last_checkpoint_id) SELECT thread_id, MAX(checkpoint_id) "
             "FROM checkpoints WHERE thread_id IN (SELECT value FROM json_each(?)) GROUP BY thread_id "
             "ON CONFLICT (thread_id) DO UPDATE SET "
             "last_checkpoint_id = MAX(last_checkpoint_id, excluded.last_checkpoint_id)")
REVIVE = "DELETE FROM agent_tombstones WHERE thread_id = ?"
PATCH_METADATA = "UPDATE checkpoints SET metadata = CAST(json_patch(CAST(metadata AS TEXT), ?) AS BLOB) WHERE thread_id = ?"
INSERT_WRITES = f"INSERT OR IGNORE INTO writes ({_WRITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
TABLES = ("checkpoints", "writes", "agent_blobs")
DELETE_THREADS = tuple(f"DELETE FROM {t} WHERE thread_id IN (SELECT value FROM json_each(?))" for t in TABLES)
_IN_RUNS = "json_extract(CAST({m} AS TEXT), '$.run_id') IN (SELECT value FROM json_each(?))"
SELECT_RUNS = f"SELECT thread_id, checkpoint_ns, checkpoint_id, type, checkpoint FROM checkpoints WHERE {_IN_RUNS.format(m='metadata')}"
# The writes that the runs' rows carry for their parents: they stay, as rows of `writes`, where the parent does.
SELECT_RUNS_FOLDED = ("SELECT thread_id, checkpoint_ns, parent_checkpoint_id, parent_writes FROM checkpoints c "
                      f"WHERE parent_writes IS NOT NULL AND {_IN_RUNS.format(m='metadata')} AND EXISTS (SELECT 1 "
                      "FROM checkpoints p WHERE p.thread_id = c.thread_id AND p.checkpoint_ns = c.checkpoint_ns "
                      "AND p.checkpoint_id = c.parent_checkpoint_id)")
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
EXISTS_THREAD = "SELECT 1 FROM checkpoints WHERE thread_id = ? LIMIT 1"
# A page of a thread's every namespace (_Rows._every_namespace_page): its first ?2 namespaces, one index seek
# each (SELECT DISTINCT reads every checkpoint of the thread); past MAX_PAGED_NAMESPACES, the page's keys
# sorted from the primary key's index alone, then its rows read by key.
MAX_PAGED_NAMESPACES = 8
SELECT_NAMESPACES = ("WITH RECURSIVE ns(v) AS (SELECT MIN(checkpoint_ns) FROM checkpoints WHERE thread_id = ?1 "
                     "UNION ALL SELECT (SELECT MIN(checkpoint_ns) FROM checkpoints WHERE thread_id = ?1 AND "
                     "checkpoint_ns > v) FROM ns WHERE v IS NOT NULL) SELECT v FROM ns WHERE v IS NOT NULL LIMIT ?2")
SELECT_PAGE_BY_KEYS = (f"SELECT {_COLUMNS} FROM checkpoints WHERE thread_id = ? AND (checkpoint_ns, checkpoint_id) IN "
                       "(SELECT checkpoint_ns, checkpoint_id FROM checkpoints {where} ORDER BY checkpoint_id DESC "
                       "LIMIT ?) ORDER BY checkpoint_id DESC")
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
COPY_ALL = (
    f"INSERT INTO checkpoints ({_COLUMNS}, parent_writes) SELECT ?, {_COLUMNS_REST}, parent_writes FROM checkpoints "
    "WHERE thread_id = ?",
    f"INSERT INTO writes ({_WRITE_COLUMNS}) SELECT ?, {_WRITE_REST} FROM writes WHERE thread_id = ?",
    "INSERT INTO agent_blobs (thread_id, checkpoint_ns, channel, version, type, blob, base) "
    "SELECT ?, checkpoint_ns, channel, version, type, blob, base FROM agent_blobs WHERE thread_id = ?",
)
SELECT_LINEAGE_ROWS = f"SELECT {_COLUMNS}, parent_writes FROM checkpoints c WHERE c.thread_id = ? AND {_IN_LINEAGE}"
# A whole thread's rows, to copy them one by one when they are encrypted (bound to their thread).
SELECT_THREAD_ROWS = f"SELECT {_COLUMNS}, parent_writes FROM checkpoints WHERE thread_id = ?"
SELECT_THREAD_WRITES = f"SELECT {_WRITE_COLUMNS} FROM writes WHERE thread_id = ?"
# A step's writes a row carried, as rows of `writes`: they were stored before any row of the same key that is
# there (_unfold), so they replace it.
INSERT_CARRIED = f"INSERT OR REPLACE INTO writes ({_WRITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
SELECT_CARRIED_ELSEWHERE = ("SELECT parent_checkpoint_id, parent_writes FROM checkpoints WHERE thread_id = ?1 "
                            "AND checkpoint_ns = ?2 AND checkpoint_id = ?3 AND parent_writes IS NOT NULL "
                            "AND parent_checkpoint_id IS NOT ?4")
UNCARRY = "UPDATE checkpoints SET parent_writes = NULL WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?"
SELECT_THREAD_FOLDED = ("SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id, parent_writes FROM checkpoints "
                        "WHERE thread_id = ? AND parent_writes IS NOT NULL")
_BLOB_COLUMNS = "thread_id, checkpoint_ns, channel, version, type, blob, base"
SELECT_THREAD_BLOBS = f"SELECT {_BLOB_COLUMNS} FROM agent_blobs WHERE thread_id = ?"
INSERT_BLOB = f"INSERT INTO agent_blobs ({_BLOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
# The lineage's writes, except those of its last checkpoint: they belong to the step after it.
COPY_LINEAGE_WRITES = (
    f"INSERT INTO writes ({_WRITE_COLUMNS}) SELECT ?, {_WRITE_REST} FROM writes w "
    "WHERE w.thread_id = ? AND NOT (w.checkpoint_ns = '' AND w.checkpoint_id = ?) AND EXISTS (SELECT 1 FROM "
    "checkpoints c WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns "
    f"AND c.checkpoint_id = w.checkpoint_id AND {_IN_LINEAGE})"
)
SELECT_LINEAGE_WRITES = (f"SELECT {', '.join('w.' + c for c in _WRITE_COLUMNS.split(', '))} FROM writes w WHERE w.thread_id = ? "
                         "AND NOT (w.checkpoint_ns = '' AND w.checkpoint_id = ?) AND EXISTS (SELECT 1 FROM checkpoints c "
                         "WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns "
                         f"AND c.checkpoint_id = w.checkpoint_id AND {_IN_LINEAGE})")


@lru_cache(maxsize=64)
def _insert_writes(n: int, replace: bool) -> str:
    """One INSERT for a task's n writes: one statement, one transaction, one call into SQLite."""
    rows = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * n)
    return (f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO writes ({_WRITE_COLUMNS}) "
            f"SELECT * FROM (VALUES {rows}) WHERE NOT EXISTS ({_DELETED})")


# A plan is a generator of (sql, params, many) that receives each statement's rows and returns its result;
# Sqlite and AsyncSqlite each run it with their own connection, so every operation is written once.
Plan = Generator[tuple[str, Any, bool], list, Any]


def _params(config) -> tuple[str, str]:
    configurable = config["configurable"]
    return str(configurable["thread_id"]), configurable.get("checkpoint_ns", "")


def _wanted(where: dict, writes: list) -> set:
    """The stored values a checkpoint needs: those it keeps apart, and the bases of its writes' deltas."""
    return set(where.items()) | {(w[1], base) for w in writes if (base := delta_base(w[2], w[3])) is not None}


class _Rows:
    """Rows in and out of the SQLite tables, and every operation as a plan, shared by the sync and async
    savers (which only run plans)."""

    serde: Any

    @cached_property
    def chains(self) -> Chains:
        return Chains()

    def with_allowlist(self, extra_allowlist):
        return saver_with_allowlist(self, extra_allowlist)

    # -- writing ---------------------------------------------------------------------------------------

    def _checkpoint_row(self, config, checkpoint, metadata, new_versions) -> tuple[tuple, Encoded]:
        configurable = config["configurable"]
        thread_id, ns = str(configurable["thread_id"]), configurable["checkpoint_ns"]
        if configurable.get("checkpoint_id") is None:
            self.chains.start(thread_id, ns)
        return self._row(thread_id, ns, checkpoint, configurable.get("checkpoint_id"),
                         dump_metadata(seal_metadata(self.serde, get_checkpoint_metadata(config, metadata),
                                                     context("metadata", thread_id, ns, checkpoint["id"]))),
                         new_versions)

    def _row(self, thread_id: str, ns: str, checkpoint, parent_id, metadata: bytes, new_versions,
             *, full: bool = False) -> tuple[tuple, Encoded]:
        inline, apart = split_values(checkpoint["channel_values"])
        # Values inside the row are plain msgpack; the row as a whole is compressed and encrypted once.
        encoded = self.chains.encode_checkpoint(inner_of(self.serde), thread_id, ns, apart,
                                                checkpoint["channel_versions"], new_versions, here=checkpoint["id"],
                                                full=full)
        compact = pack_versions({
            **checkpoint, "channel_values": inline,
            "apart": {c: encoded.refs.get(c) for c in apart},
            "values": {c: (b.type, b.data) for c, b in encoded.blobs.items()},
        })
        type_, data = dump(self.serde, compact, context("checkpoint", thread_id, ns, checkpoint["id"]))
        type_ = CHECKPOINT_TYPE if type_ == MSGPACK else f"{CHECKPOINT_TYPE}+{type_}"
        return (thread_id, ns, checkpoint["id"], parent_id, type_, data, metadata), encoded

    def _writes_statement(self, config, writes, task_id: str, task_path: str) -> tuple[str, list]:
        if (params := packed_write_params(self.chains, self.serde, config, writes, task_id, task_path)) is not None:
            return _insert_writes(1, False), [*params, params[0], params[2]]
        params, special = write_params(self.chains, self.serde, config, writes, task_id, task_path)
        return _insert_writes(len(params) // WRITE_PARAMS, special), [*params, params[0], params[2]]

    @staticmethod
    def _put_statement(row, metadata) -> tuple[str, tuple]:
        """The put's INSERT and its parameters: PUT_NEXT for a run's next checkpoint, else PUT_CHECKPOINT."""
        if row[3] is not None and metadata.get("source") in ONE_WRITER_SOURCES:
            return PUT_NEXT, row
        return PUT_CHECKPOINT, (*row, row[0], row[3])

    @staticmethod
    def _not_stored(row, deleted) -> Exception:
        """Why a put stored nothing: the thread was deleted (a tombstone names its parent), or another writer
        already went on from its parent."""
        return thread_deleted(row[0]) if deleted else writer_conflict(row[0], row[3])

    # -- reading ---------------------------------------------------------------------------------------

    def _unpack(self, type_: str, data: bytes, where: bytes) -> dict | None:
        """The checkpoint of one of our rows (stored at `where`: its context), versions still packed (only the
        checkpoint a tuple is made of needs them: _open); None for a row of the official saver."""
        if type_ == CHECKPOINT_TYPE:
            return load(self.serde, MSGPACK, data, where)
        if type_.startswith(CHECKPOINT_TYPE + "+"):
            return load(self.serde, type_[len(CHECKPOINT_TYPE) + 1:], data, where)
        return None

    def _row_values(self, type_: str, data: bytes, where: bytes) -> dict:
        """The values a row stores apart: {channel: (type, bytes)}."""
        compact = self._unpack(type_, data, where)
        return {c: tuple(v) for c, v in compact["values"].items()} if compact else {}

    def _resolve(self, thread_id: str, ns: str, wanted: set, rows: dict) -> Plan:
        """Every stored value in `wanted` - (channel, key of the row that stores it) - and the bases their
        deltas extend, transitively: {(channel, key): (type, bytes)}. `rows` caches rows' values by id."""
        found: dict = {}
        tried: set = set()
        while wanted := wanted - tried:
            tried |= wanted
            if ids := sorted({key for _, key in wanted} - rows.keys()):
                for cid, type_, data in (yield SELECT_ROWS, (thread_id, ns, json.dumps(ids)), False):
                    rows[cid] = self._row_values(type_, data, context("checkpoint", thread_id, ns, cid))
                rows.update((cid, {}) for cid in ids if cid not in rows)
            missing = set()
            for channel, key in wanted:
                if (stored := rows[key].get(channel)) is not None:
                    found[(channel, key)] = stored
                else:
                    missing.add((channel, key))
            if missing:
                keys = json.dumps(sorted({key for _, key in missing}))
                for channel, key, type_, data in (yield SELECT_KEPT, (thread_id, ns, keys), False):
                    if (channel, key) in missing:
                        found[(channel, key)] = unseal(self.serde, type_, data,
                                                       context("value", thread_id, ns, channel, key))
            wanted = {(c, base) for (c, _), (t, d) in found.items() if (base := delta_base(t, d)) is not None}
        return found

    def _read(self, row, rows: dict, *, seed: bool) -> Plan:
        """The CheckpointTuple of a checkpoint row: its writes, and the values it refers to."""
        thread_id, ns, checkpoint_id = row[:3]
        writes = self._unseal_writes(row, (yield SELECT_WRITES, (thread_id, ns, checkpoint_id), False))
        checkpoint, where = self._open(row, rows)
        found = yield from self._resolve(thread_id, ns, _wanted(where, writes), rows)
        return self._tuple(row, checkpoint, where, writes, Decoder(self.serde, found), seed=seed)

    def _open(self, row, rows: dict) -> tuple[dict, dict]:
        """A row's checkpoint, without the values it keeps apart, and where each of those is stored
        ({channel: key}); the values the row itself stores go into `rows`."""
        checkpoint_id, type_, data = row[2], row[4], row[5]
        compact = self._unpack(type_, data, context("checkpoint", *row[:3]))
        if compact is None:  # written by the official saver: every value inline
            return self.serde.loads_typed((type_, data)), {}
        rows[checkpoint_id] = {c: tuple(v) for c, v in compact.pop("values").items()}
        return unpack_versions(compact), {c: key or checkpoint_id for c, key in compact.pop("apart").items()}

    def _tuple(self, row, checkpoint: dict, where: dict, writes: list, decoder: Decoder, *,
               seed: bool) -> CheckpointTuple:
        """The CheckpointTuple of an opened row, its values decoded from what `decoder` was given."""
        thread_id, ns, checkpoint_id, parent_id, _, _, meta = row
        found = decoder.blobs
        versions, tips, known = checkpoint["channel_versions"], {}, {}
        try:
            for channel, key in where.items():
                if (stored := found.get((channel, key))) is None:
                    raise MissingBase(f"the value of '{channel}' stored with checkpoint {key} is gone")
                checkpoint["channel_values"][channel] = decoder.value(channel, *stored, key=key)
                known[(channel, str(versions.get(channel)))] = key
                if seed and (tip := decoder.list_tip(channel, key, *stored)):
                    tips[channel] = tip
            pending = decode_pending(decoder, writes)
        except MissingBase as exc:
            raise unreadable(checkpoint_id, thread_id, exc) from None
        if seed:
            self.chains.seed(thread_id, ns, known, tips, found.keys())
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}
        parent = ({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent_id}}
                  if parent_id else None)
        metadata = (unseal_metadata(self.serde, json.loads(meta), context("metadata", thread_id, ns, checkpoint_id))
                    if meta is not None else {})
        return CheckpointTuple(config, checkpoint, metadata, parent, pending)

    def _unseal_writes(self, row, writes) -> list[tuple]:
        """A checkpoint row's (task_id, channel, type, value, task_path, idx) writes, their values unsealed, a
        packed row (compact.PACKED) as the writes it stands for, and those its children carry (_unfold)."""
        return unseal_writes(self.serde, *row[:3], _unfold(writes, *row[:3]))

    # -- operations ------------------------------------------------------------------------------------

    def _get_tuple_plan(self, config) -> Plan:
        thread_id, ns = _params(config)
        if checkpoint_id := get_checkpoint_id(config):
            found = yield SELECT_ONE, (thread_id, ns, checkpoint_id), False
        else:
            found = yield SELECT_LATEST, (thread_id, ns), False
            if not found:  # nothing stored in this thread and namespace
                self.chains.start(thread_id, ns)
        return (yield from self._read(found[0], {}, seed=True)) if found else None

    def _list_plan(self, config, filter, before, limit) -> Plan:
        # Sealed metadata keys (encryption on) are matched after reading, so the limit is applied then too.
        config, (filter, sealed) = text_thread(config), split_filter(self.serde, filter)
        if limit is not None and not sealed and config is not None and \
                config["configurable"].get("checkpoint_ns") is None:
            rows = yield from self._every_namespace_page(config, filter, before, int(limit))
        else:
            where, params = search_where(config, filter, before)
            query = f"SELECT {_COLUMNS} FROM checkpoints {where} ORDER BY checkpoint_id DESC"
            if limit is not None and not sealed:
                query, params = query + " LIMIT ?", (*params, int(limit))
            rows = yield query, tuple(params), False
        # Per thread and namespace, not per checkpoint: one statement for the writes of all its rows, and
        # one resolve of the values they refer to, so a list costs the same few statements however long.
        groups: dict[tuple, list] = {}
        for row in rows:
            groups.setdefault(row[:2], []).append(row)
        opened: dict[tuple, tuple] = {}  # (thread, ns, id) -> (checkpoint, apart, writes, decoder)
        for (thread_id, ns), group in groups.items():
            writes: dict[str, list] = {row[2]: [] for row in group}
            ids = json.dumps(list(writes))
            for checkpoint_id, *write in (yield SELECT_LISTED_WRITES, (thread_id, ns, ids, min(writes)), False):
                writes[checkpoint_id].append(write)
            stored: dict = {}  # rows' values by id: the listed rows', and any they refer to
            wanted: set = set()
            for row in group:
                checkpoint, apart = self._open(row, stored)
                writes[row[2]] = self._unseal_writes(row, writes[row[2]])
                wanted |= _wanted(apart, writes[row[2]])
                opened[row[:3]] = (checkpoint, apart, writes[row[2]])
            decoder = Decoder(self.serde, (yield from self._resolve(thread_id, ns, wanted, stored)))
            for row in group:
                opened[row[:3]] += (decoder,)
        tuples = []
        for row in rows:
            if limit is not None and len(tuples) >= limit:
                break
            tup = self._tuple(row, *opened[row[:3]], seed=False)
            if matches(tup.metadata, sealed):
                tuples.append(tup)
        return tuples

    @staticmethod
    def _every_namespace_page(config, filter, before, limit: int) -> Plan:
        """A page of one thread's checkpoints in every namespace, newest first, as an export lists a thread. The
        primary key orders checkpoints within a namespace only, so one query ordered by checkpoint_id sorted
        every checkpoint of the thread before `before`, blobs and all, for each page (the middle of a
        6,000-step thread: 11 ms a page); instead each namespace's page is read in the key's order and the
        pages merged (0.07 ms), or, past MAX_PAGED_NAMESPACES namespaces, only the keys are sorted (1.8 ms)."""
        thread_id = config["configurable"]["thread_id"]
        spaces = yield SELECT_NAMESPACES, (thread_id, MAX_PAGED_NAMESPACES + 1), False
        if len(spaces) > MAX_PAGED_NAMESPACES:
            where, params = search_where(config, filter, before)
            return (yield SELECT_PAGE_BY_KEYS.format(where=where), (thread_id, *params, limit), False)
        rows = []
        for (ns,) in spaces:
            where, params = search_where({**config, "configurable": {**config["configurable"], "checkpoint_ns": ns}},
                                         filter, before)
            rows += yield (f"SELECT {_COLUMNS} FROM checkpoints {where} ORDER BY checkpoint_id DESC LIMIT ?",
                           (*params, limit), False)
        return sorted(rows, key=lambda row: row[2], reverse=True)[:limit]

    def _delete_plan(self, thread_ids: list[str], *, final: bool = False) -> Plan:
        """`final`: remember the threads as deleted (agent_tombstones), so late writes cannot bring them back."""
        if final:
            yield TOMBSTONE, (json.dumps(thread_ids),), False
        for sql in DELETE_THREADS:
            yield sql, (json.dumps(thread_ids),), False

    def _delete_runs_plan(self, run_ids: list[str]) -> Plan:
        """The runs' checkpoints and writes go; values their rows store stay, in agent_blobs, since other
        runs' checkpoints may refer to them (delete_thread and prune remove them with the thread)."""
        runs = json.dumps(run_ids)
        kept = [(thread_id, ns, channel, cid, *seal(self.serde, t, d, context("value", thread_id, ns, channel, cid)))
                for thread_id, ns, cid, type_, data in (yield SELECT_RUNS, (runs,), False)
                for channel, (t, d) in self._row_values(type_, data,
                                                        context("checkpoint", thread_id, ns, cid)).items()]
        if kept:
            yield INSERT_KEPT, kept, True
        carried = [w for thread_id, ns, parent, blob in (yield SELECT_RUNS_FOLDED, (runs,), False)
                   for w in folded_rows(thread_id, ns, parent, blob)]
        if carried:  # (those of a parent deleted too go with the next statement)
            yield INSERT_CARRIED, carried, True
        for sql in DELETE_RUNS:
            yield sql, (runs,), False

    def _copy_plan(self, source: str, target: str, up_to: str | None, metadata: dict | None) -> Plan:
        metadata = copy_metadata(self.serde, metadata)
        if (yield EXISTS_THREAD, (target,), False):
            raise target_exists(target)
        yield REVIVE, (target,), False
        yield from self._copy_rows(source, target, up_to)
        if metadata:
            yield PATCH_METADATA, (orjson.dumps(metadata).decode(), target), False

    def _copy_rows(self, source: str, target: str, up_to: str | None) -> Plan:
        # Encrypted values are bound to their rows (savers.compact.context): a copy into another thread is
        # decrypted and encrypted again, row by row, instead of copied in SQL.
        moved = encrypted(self.serde)
        if up_to is None:
            if not moved:
                for sql in COPY_ALL:
                    yield sql, (target, source), False
                return
            yield INSERT_CHECKPOINT, [self._moved(row, target) for row in (yield SELECT_THREAD_ROWS, (source,), False)], True
            yield INSERT_WRITES, [self._moved_write(w, target) for w in (yield SELECT_THREAD_WRITES, (source,), False)], True
            yield INSERT_BLOB, [self._moved_blob(b, target) for b in (yield SELECT_THREAD_BLOBS, (source,), False)], True
            return
        ids = [r[0] for r in (yield SELECT_LINEAGE, (source, up_to, source), False)]
        if not ids:
            raise no_checkpoint(source, up_to)
        lineage = (json.dumps(ids), json.dumps([i for i in ids if i != up_to]))
        rows = yield SELECT_LINEAGE_ROWS, (source, *lineage), False
        yield INSERT_CHECKPOINT, [self._moved(row, target) if moved else (target, *row[1:]) for row in rows], True
        writes = yield SELECT_LINEAGE_WRITES, (source, up_to, *lineage), False
        if moved:
            yield INSERT_WRITES, [self._moved_write(w, target) for w in writes], True
        else:
            yield COPY_LINEAGE_WRITES, (target, source, up_to, *lineage), False
        # Writes the rows carry for their parents come with them (up_to's children, which carry its writes, are not
        # copied); those of a copied checkpoint whose child is not copied (a fork point) become rows of `writes`.
        copied = {(row[1], row[2]) for row in rows}
        left = [w for ns, cid, parent, data in (yield SELECT_THREAD_FOLDED, (source,), False)
                if (ns, parent) in copied and (ns, cid) not in copied and (ns, parent) != ("", up_to)
                for w in folded_rows(source, ns, parent, data)]
        if left:
            yield INSERT_CARRIED, [self._moved_write(w, target) if moved else (target, *w[1:]) for w in left], True
        writes = [*writes, *left, *(w for row in rows if row[7] is not None
                                    for w in folded_rows(source, row[1], row[3], row[7]))]
        # Values the lineage refers to that rows outside it store: kept for the copy in agent_blobs.
        wanted: dict[str, set] = {}
        for _, ns, cid, _, type_, data, _, _ in rows:
            if compact := self._unpack(type_, data, context("checkpoint", source, ns, cid)):
                wanted.setdefault(ns, set()).update(
                    (c, key or cid) for c, key in compact["apart"].items())
                wanted[ns].update((c, base) for c, (t, d) in compact["values"].items()
                                  if (base := delta_base(t, d)) is not None)
        for _, ns, cid, task_id, _, idx, channel, type_, value in writes:
            stored = unseal(self.serde, type_, value, context("write", source, ns, cid, task_id, idx))
            if (base := delta_base(*stored)) is not None:
                wanted.setdefault(ns, set()).add((channel, base))
        for ns, keys in wanted.items():
            found = yield from self._resolve(source, ns, keys, {})
            kept = [(target, ns, c, key, *seal(self.serde, t, d, context("value", target, ns, c, key)))
                    for (c, key), (t, d) in found.items() if (ns, key) not in copied]
            if kept:
                yield INSERT_KEPT, kept, True

    def _moved(self, row, target: str) -> tuple:
        """A checkpoint row (with parent_writes) for another thread, its sealed checkpoint, metadata and the writes
        it carries bound to the new row."""
        thread_id, ns, cid, parent, type_, data, meta, carried = row
        if type_.startswith(CHECKPOINT_TYPE + "+"):
            inner, sealed = type_.split("+", 1)
            type_, data = reseal(self.serde, sealed, data, "checkpoint", thread_id, target, ns, cid)
            type_ = inner if type_ == MSGPACK else f"{inner}+{type_}"
        if meta is not None:
            meta = dump_metadata(reseal_metadata(self.serde, json.loads(meta), context("metadata", thread_id, ns, cid),
                                                 context("metadata", target, ns, cid)))
        if carried is not None:
            carried = _fold([self._moved_write(w, target)[3:] for w in folded_rows(thread_id, ns, parent, carried)])
        return target, ns, cid, parent, type_, data, meta, carried

    def _moved_write(self, write, target: str) -> tuple:
        thread_id, ns, cid, task_id, task_path, idx, channel, type_, value = write
        return (target, ns, cid, task_id, task_path, idx, channel,
                *reseal(self.serde, type_, value, "write", thread_id, target, ns, cid, task_id, idx))

    def _moved_blob(self, blob, target: str) -> tuple:
        thread_id, ns, channel, version, type_, data, base = blob
        return (target, ns, channel, version,
                *reseal(self.serde, type_, data, "value", thread_id, target, ns, channel, version), base)

    def _prune_plan(self, thread_ids: list[str], strategy: str) -> Plan:
        kept = []
        if strategy == "keep_latest":
            refuse_delta_threads([r[0] for r in (yield SELECT_DELTA_THREADS, (json.dumps(thread_ids),), False)])
            for thread_id in thread_ids:
                for row in (yield SELECT_HEADS, (thread_id,), False):
                    kept.append((yield from self._standalone(row)))
        yield from self._delete_plan(thread_ids, final=strategy == "delete")
        for checkpoint_row, write_rows in kept:
            yield INSERT_CHECKPOINT, checkpoint_row, False
            if write_rows:
                yield INSERT_WRITES, write_rows, True

    def _standalone(self, row) -> Plan:
        """A checkpoint row that stores every value it refers to, with no parent, and its writes whole."""
        thread_id, ns, checkpoint_id = row[:3]
        tup = yield from self._read(row, {}, seed=False)
        checkpoint = {**tup.checkpoint, "channel_values": dict(tup.checkpoint["channel_values"])}
        new_row, _ = self._row(thread_id, ns, checkpoint, None, row[6], {}, full=True)
        stored = self._unseal_writes(row, (yield SELECT_WRITES, (thread_id, ns, checkpoint_id), False))
        writes = []
        # In the order of pending_writes (decode_pending sorts the same unsealed writes the same way).
        for (task_id, channel, type_, value, task_path, idx), (_, _, decoded) in zip(
                sorted(stored, key=lambda w: writes_sort_key(w[4], w[0], w[5])), tup.pending_writes):
            where = context("write", thread_id, ns, checkpoint_id, task_id, idx)
            type_, value = dump(self.serde, decoded, where) if type_ == DELTA else seal(self.serde, type_, value, where)
            writes.append((thread_id, ns, checkpoint_id, task_id, task_path, idx, channel, type_, value))
        return (*new_row, None), writes


def _run_plan(conn: sqlite3.Connection, plan: Plan, begin: str | None) -> Any:
    """Runs a plan's statements on `conn`, in one transaction when `begin` says how to start it (the sync saver
    calls it under its lock; the async one on aiosqlite's thread, in one hop)."""
    if begin:
        conn.execute(begin)
    try:
        sql, params, many = next(plan)
        while True:
            if many:
                conn.executemany(sql, params)
                rows = []
            else:
                rows = conn.execute(sql, params).fetchall()
            sql, params, many = plan.send(rows)
    except StopIteration as done:
        if begin:
            conn.execute("COMMIT")
        return done.value
    except BaseException:
        if begin and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _copy_wal_back(conn: sqlite3.Connection) -> None:
    """What SQLite's autocheckpoint does after a commit, for commits of a connection that does not do it
    (INLINE_PRAGMAS): PASSIVE, so it neither waits for nor holds up readers and writers."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


class WalCopier:
    """Copies a saver's WAL back into the database file on a thread of its own, so that no write waits for it.

    SQLite's autocheckpoint copies the WAL back inside the commit that crosses its interval: on a 2-core VM
    ~35-40 ms for 1,000 commits' pages, about as long as the 1,000 commits took, all of it on a step's
    critical path. The connections that make a run's commits do not (INLINE_PRAGMAS): the sync saver's, the
    async saver's inline one. Every INLINE_CHECKPOINT_COMMITS of their commits this thread copies the WAL back
    on a connection of its own while the saver goes on writing (SQLite runs a checkpoint beside a writer, and
    Python lets go of the GIL meanwhile), then a last time holding `lock`, which those commits take: only the
    pages written meanwhile, so the WAL is then all copied and the next commit starts it over from its
    beginning. Without that last copy a WAL written without pause is never all copied and grows without bound
    (tests/test_savers.py: 105 MB after 8,000 commits instead of 20 MB).

    Beside the writes it copies up to CATCH_UP_COPIES times, until a copy takes under CAUGHT_UP_S (or no longer
    half the time of the one before: writes as fast as the copies), flushing the database file's new pages to
    disk after each (_flush: SQLite flushes them only in a copy that finds no page written meanwhile - the last
    one, which took ~6 ms for ~12 MB of them). So the last copy holds the writes off only for the pages written
    during a short copy: ~1.2 ms every ~450 steps of bench/savers.py's graph, 3 us a step, where a last copy
    right after the first held them off ~10 ms, 28 us a step (copying takes ~14 us a page on this VM, against
    ~240 us a step of ~3.3 pages: each copy has a fifth of the pages of the one before, or fewer). Durability
    is unchanged: every commit is in the WAL before its call returns, and a copy killed halfway is redone by
    the next open."""

    def __init__(self, path: str, lock: threading.Lock) -> None:
        self.conn = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
                                    isolation_level=None)
        self.path, self.file, self.fd = path, _file_id(path), None  # for _flush
        self.lock = lock
        self.commits = 0
        self.copies = 0
        self._wanted = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._copy_when_wanted, name="agent-wal-copier", daemon=True)
        self._thread.start()

    def committed(self, commits: int = 1) -> None:
        """Count the saver's commits (under its lock); every INLINE_CHECKPOINT_COMMITS, wake the thread."""
        self.commits += commits
        if self.commits >= INLINE_CHECKPOINT_COMMITS:
            self.commits = 0
            self._wanted.set()

    def _copy_when_wanted(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            try:
                last = float("inf")
                for _ in range(CATCH_UP_COPIES):  # the pages written meanwhile: fewer each time
                    if self._closing:
                        break
                    start = time.monotonic()
                    _copy_wal_back(self.conn)
                    self._flush()
                    took = time.monotonic() - start
                    if took < CAUGHT_UP_S or took > last / 2:  # caught up, or the writes keep up with the copies
                        break
                    last = took
                with self.lock:
                    _copy_wal_back(self.conn)
            except sqlite3.Error as exc:  # the WAL grows until a later copy succeeds; no commit is lost
                logging.getLogger(__name__).warning("copying the SQLite WAL back failed: %s", exc)
            else:
                self.copies += 1

    def _flush(self) -> None:
        """Flushes the pages the copies wrote to the database file to disk, beside the writes: the last copy
        must, before the WAL can start over, and ~12 MB of them took it ~6 ms, holding up the writes.

        Through any descriptor this process has open on the file (its connections'; Linux's /proc/self/fd):
        opening one here would not do, as closing it drops the process's POSIX locks on the file. Where none
        is found (elsewhere, or the file replaced), SQLite flushes in the last copy, as it did before."""
        if self.fd is None or _file_id(self.fd) != self.file:  # (a descriptor closed, its number reused)
            self.fd = next((fd for fd in _descriptors(self.path) if _file_id(fd) == self.file), None)
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.fdatasync(self.fd)

    def close(self) -> None:
        self._closing = True
        self._wanted.set()
        self._thread.join()
        self.conn.close()


def _close_held(held: HeldWrites | None, at_exit: weakref.finalize | None) -> sqlite3.Error | None:
    """Closes a saver's held writes now (committing them) instead of at exit, once; what could not be stored
    (logged; the caller closes the rest all the same, then raises it)."""
    if held is None or at_exit is None or at_exit.detach() is None:
        return None
    try:
        held.close()
    except sqlite3.Error as exc:
        return exc
    return None


def _descriptors(path: str) -> list[int]:
    """This process's file descriptors open on `path`: /proc/self/fd on Linux, none known elsewhere."""
    fds, real = [], os.path.realpath(path)
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{name}") == real:
                    fds.append(int(name))
    return fds


def _file_id(file: str | int) -> tuple[int, int] | None:
    """(device, inode) of a path or descriptor: which file it is."""
    try:
        found = os.stat(file)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _after_copy(conn: sqlite3.Connection, copier: WalCopier | None, fn, *args) -> Any:
    """fn(conn, *args) on aiosqlite's thread: a write the inline connection could not make, after the copier's
    second copy if one is under way (so that copy still leaves the WAL all copied)."""
    if copier is None:
        return fn(conn, *args)
    with copier.lock:
        return fn(conn, *args)


def inline_connection(path: str) -> sqlite3.Connection:
    """The async saver's connection for its hot path (INLINE_PRAGMAS). Its statements run on whichever
    thread runs the saver's event loop, one at a time under the saver's lock."""
    conn = sqlite3.connect(path, check_same_thread=False, timeout=0, isolation_level=None)
    try:
        for pragma in INLINE_PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def _put_row(conn: sqlite3.Connection, sql: str, params, row) -> bool | None:
    """put's INSERT. None when stored; else whether a tombstone refused it (if not, another writer did)."""
    if conn.execute(sql, params).rowcount:
        return None
    if (carried := conn.execute(SELECT_CARRIED_ELSEWHERE, (*row[:4],)).fetchone()) is not None:
        # a checkpoint put again with another parent: the writes its row carried for the old one become rows
        conn.executemany(INSERT_CARRIED, folded_rows(row[0], row[1], *carried))
        conn.execute(UNCARRY, row[:3])
        if conn.execute(sql, params).rowcount:
            return None
    return conn.execute(_DELETED, (row[0], row[3])).fetchone() is not None


def _revive(conn: sqlite3.Connection, thread_id: str) -> None:
    conn.execute(REVIVE, (thread_id,))


def _write_rows(conn: sqlite3.Connection, sql: str, params) -> bool:
    """put_writes' INSERT; whether a tombstone refused it (a write to a deleted thread stores nothing)."""
    return not conn.execute(sql, params).rowcount and conn.execute(_DELETED, params[-2:]).fetchone() is not None


# parent_writes: msgpack [[task_id, task_path, idx, channel, type, value], ...], the rows of `writes` it stands
# for without the key they share (their thread and namespace are the row's, their checkpoint its parent).
# FOLD_MAX_BYTES: bigger writes stay rows of their own, so a checkpoint row stays as small as it was.
FOLD_MAX_BYTES = 16 << 10


def _fold(entries: list) -> bytes:
    return ormsgpack.packb(entries)


def folded_rows(thread_id: str, ns: str, parent: str, data: bytes) -> list[tuple]:
    """The rows of `writes` (all nine columns) a child's parent_writes stands for."""
    try:
        entries = ormsgpack.unpackb(data)
        rows = [(thread_id, ns, parent, task_id, task_path, idx, channel, type_, value)
                for task_id, task_path, idx, channel, type_, value in entries]
    except (ormsgpack.MsgpackDecodeError, TypeError, ValueError):
        raise StorageError(f"the writes of checkpoint {parent} of thread '{thread_id}' are stored in a form this "
                           "version does not read: the row was altered, or written by other code") from None
    return rows


def _unfold(writes: list, thread_id: str, ns: str, checkpoint_id: str) -> list:
    """A checkpoint's (task_id, channel, type, value, task_path, idx) writes as read by SELECT_WRITES: those
    its children carry (task_id NULL, value their parent_writes), oldest child first, then its rows of `writes`,
    each unless one before has its key (task_id, idx), as INSERT OR IGNORE keeps the first. Carried writes come
    first: they were committed with the step after them, and a row of the same key can only have come later (a
    task run again from the checkpoint, its put refused as a second writer's)."""
    if all(w[0] is not None for w in writes):
        return writes
    found: dict[tuple, tuple] = {}
    for w in writes:
        if w[0] is None:
            for *_, task_id, task_path, idx, channel, type_, value in folded_rows(thread_id, ns, checkpoint_id, w[3]):
                found.setdefault((task_id, idx), (task_id, channel, type_, value, task_path, idx))
    for w in writes:
        if w[0] is not None:
            found.setdefault((w[0], w[5]), w)
    return list(found.values())


class _Unfoldable(Exception):
    """The row with the writes it carries was refused for good (too big): put as before, the writes apart."""


def _put_folded(conn: sqlite3.Connection, params, row, folded: list, data: bytes) -> bool | None:
    """put's INSERT carrying `folded`'s writes (PUT_NEXT_FOLDED); when it stores nothing (a row of that id is
    there, another writer went on from the parent, a tombstone) the writes are rows of their own and the put
    is PUT_NEXT, as without them."""
    try:
        if conn.execute(PUT_NEXT_FOLDED, (*params, data)).rowcount:
            return None
        for sql, params_ in folded:
            conn.execute(sql, params_)
    except (sqlite3.DataError, sqlite3.IntegrityError, sqlite3.InterfaceError) as exc:
        raise _Unfoldable() from exc
    return _put_row(conn, PUT_NEXT, params, row)


# put_writes does not commit its row: the row waits in memory for the next put, which commits it in the
# checkpoint's transaction - one commit per step instead of two. A commit is ~25 us of syscalls on this VM
# (WAL frames, shared-memory locks) and, for the sync saver, a hand-off between LangGraph's threads. In-graph
# A/B against committing each call (bench/savers.py's rounds, 30-40 interleaved rounds of 3,000-4,000
# threads' steps): sync 1.296 -> 1.266x and 1.258 -> 1.230x InMemorySaver; async (aput_writes on the inline
# connection, under the WalCopier's lock) 1.246 -> 1.205x. A row is never held longer than HOLD_WRITES_S (a
# thread of the saver commits it then, so a step's finished tasks are stored while a slower one still runs),
# nor past any other call on the saver (a read sees every write put before it), nor past close or the end of
# the process. Writes to LangGraph's special channels - an error, an interrupt - are committed before
# put_writes returns, with any held. Durability as the issue states it is unchanged: when a step's checkpoint
# is stored, so are the writes put before it. What a `kill -9` can now lose is a task's writes within
# HOLD_WRITES_S of their put_writes, with no checkpoint after them yet: that task runs again on resume (our
# graph's reply cache answers its model call again without paying for it).
HOLD_WRITES_S = 0.01
# The thread sleeps once nothing was held for this long (and wakes with the next held row).
HOLD_IDLE_S = 1.0


class HeldWrites:
    """put_writes' INSERTs not yet committed, for one saver; every method but close is called holding `lock`
    (the sync saver's; the async saver's WalCopier's, which guards its inline connection). A thread of its
    own, while writes come, commits any held HOLD_WRITES_S.

    A commit refused for a while (the database locked by another process, the disk full) keeps the rows for
    the next one. A row SQLite refuses for good (a value past its size limit) is dropped alone, not kept to
    fail every later commit: the next put of its thread raises why (`refused`), as put_writes did before."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock, *, waits: bool = True) -> None:
        # `waits`: whether conn waits for another connection's write lock (the sync saver's does). The async
        # saver's inline connection does not: its commit refused as locked is tried again HOLD_WRITES_S later
        # (or made by the next aput on aiosqlite's connection), but the last one, at close, waits.
        self.conn, self.lock, self.waits = conn, lock, waits
        self.copier: WalCopier | None = None  # the saver's (Sqlite.copier), told how many rows each commit wrote
        self.rows: list[tuple[str, list]] = []
        self.since = 0.0
        self.refused: dict[str, Exception] = {}  # thread id -> why one of its held writes could not be stored
        # Once set, put_writes commits at once: the saver is closing (a write may still come from another
        # thread) or the thread stopped. A plain flag: close() may run on the thread itself (a finalizer).
        self.stopped = False
        self._awake = False
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, sql: str, params: list) -> None:
        if not self.rows:
            self.since = time.monotonic()
        self.rows.append((sql, params))
        if not self._awake:
            self._awake = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._commit_when_due, name="agent-held-writes", daemon=True)
                self._thread.start()
            self._wake.set()

    def put_row(self, sql: str, params, row, conn: sqlite3.Connection | None = None) -> bool | None:
        """put's INSERT (_put_row) with the held writes, in one transaction (one statement, when the new row
        carries them all); the row of a run's next checkpoint carries those of its parent (PUT_NEXT_FOLDED).
        Returns what _put_row does."""
        conn = conn or self.conn
        if sql is PUT_NEXT and (folded := self._take(row)):
            try:
                data = _fold([p[i + 3:i + WRITE_PARAMS] for _, p in folded for i in range(0, len(p) - 2, WRITE_PARAMS)])
                if len(data) <= FOLD_MAX_BYTES:
                    return self.commit(lambda: _put_folded(conn, params, row, folded, data), conn)
            except _Unfoldable:
                pass
            except BaseException:
                self.rows[:0] = folded  # not stored: held again, for the next commit
                raise
            self.rows[:0] = folded
        return self.commit(lambda: _put_row(conn, sql, params, row), conn)

    def _take(self, row) -> list[tuple[str, list]]:
        """The held rows of the writes of `row`'s parent (every held row is an INSERT OR IGNORE of one
        put_writes: special channels' are never held), taken out of `rows`; none unless the row's id sorts
        after its parent's (readers look for carried writes after a checkpoint: SELECT_WRITES)."""
        thread_id, ns, checkpoint_id, parent = row[:4]
        if not self.rows or checkpoint_id <= parent:
            return []
        taken, kept = [], []
        for held in self.rows:
            params = held[1]
            (taken if params[2] == parent and params[0] == thread_id and params[1] == ns else kept).append(held)
        if taken:
            self.rows = kept
        return taken

    def raise_refused(self, thread_id: str) -> None:
        """After a put of this thread: why one of its held writes could not be stored, if one could not."""
        if self.refused and (failed := self.refused.pop(thread_id, None)) is not None:
            raise StorageError(f"a write of thread '{thread_id}' before this checkpoint could not be stored: "
                               f"{failed}") from failed

    def committed(self, rows: int = 1) -> None:
        if self.copier is not None:
            self.copier.committed(rows)

    def commit(self, then: Any = None, conn: sqlite3.Connection | None = None) -> Any:
        """Commits the held rows, and whatever `then()` writes, in one transaction; returns what it returns.
        On `conn` if given (the async saver's aiosqlite connection, when its inline one is locked out)."""
        conn = conn or self.conn
        if not self.rows:
            if then is None:
                return None
            result = then()  # one statement: a commit of its own
            self.committed()
            return result
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in self.rows:
                    conn.execute(sql, params)  # a write to a thread deleted since is refused: stored nowhere
                result = then() if then is not None else None
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.DataError, sqlite3.IntegrityError, sqlite3.InterfaceError):
            self._one_by_one(conn)  # a row refused for good: the others are stored, it is dropped
            return self.commit(then, conn)  # (then() refused for good raises here, as before)
        self.committed(len(self.rows) + (then is not None))  # the WalCopier counts rows written, ~pages
        self.rows = []
        return result

    def _one_by_one(self, conn: sqlite3.Connection) -> None:
        rows, self.rows = self.rows, []
        for sql, params in rows:
            try:
                conn.execute(sql, params)
            except (sqlite3.DataError, sqlite3.IntegrityError, sqlite3.InterfaceError) as exc:
                logging.getLogger(__name__).error("a write of thread %r could not be stored: %s", params[0], exc)
                self.refused[str(params[0])] = exc
            except sqlite3.Error:
                self.rows.append((sql, params))  # refused for a while: kept
            else:
                self.committed()

    def _commit_when_due(self) -> None:
        log = logging.getLogger(__name__)
        while not self.stopped:
            self._wake.wait()
            self._wake.clear()
            idle = 0.0
            while not self.stopped and not self._closing.wait(HOLD_WRITES_S) and not self.stopped:
                # A look without the lock first (hold() appends under it; a row missed now is seen next time):
                # the lock only when something is due. Taken at every wake, the thread - made to let go of the
                # GIL while holding it - turned 2% of the async saver's aput_writes, which do not wait for the
                # lock, into commits of their own.
                if not self.rows:
                    idle += HOLD_WRITES_S
                    if idle < HOLD_IDLE_S:
                        continue
                elif time.monotonic() - self.since < HOLD_WRITES_S:
                    idle = 0.0
                    continue
                with self.lock:
                    if not self.rows:
                        if idle >= HOLD_IDLE_S:
                            self._awake = False  # under the lock: hold() wakes the thread unless it is awake
                            break
                        continue
                    idle = 0.0
                    if time.monotonic() - self.since >= HOLD_WRITES_S:
                        try:
                            self.commit()
                        except sqlite3.ProgrammingError as exc:  # the connection was closed under the saver
                            log.error("%d held writes could not be stored: %s", len(self.rows), exc)
                            self.stopped = True
                        except Exception as exc:  # held still: the next put or call commits them
                            locked = not self.waits and "locked" in str(exc)
                            (log.debug if locked else log.warning)("committing held writes failed: %s", exc)
        if not self._closing.is_set():  # stopping on its own (close() ran on this thread, the connection closed)
            with self.lock:  # else close() commits what is held: once, not here and then again there
                self._commit_at_close()

    def _commit_at_close(self) -> sqlite3.Error | None:
        try:
            if self.rows and not self.waits:
                self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self.commit()
        except sqlite3.Error as exc:
            logging.getLogger(__name__).error("%d held writes could not be stored: %s", len(self.rows), exc)
            return exc
        return None

    def close(self, quiet: bool = False) -> None:
        """Stops the thread and commits what is held (at close, when the saver is collected, at exit); a write
        put_writes gets after this is committed at once. Raises, after stopping, if what is held could not be
        stored (unless `quiet`: a finalizer's call; it is logged either way)."""
        self.stopped = True
        if self._thread is threading.current_thread():
            return  # a finalizer run by this thread: it commits what is held as it stops
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self.lock:
            failure = self._commit_at_close()
        if failure is not None and not quiet:
            raise failure


class Sqlite(_Rows, SqliteSaver):
    """The official SqliteSaver with compact storage (savers.compact), one statement per put and put_writes
    (put_writes' held for the next put's transaction: HeldWrites), every capability of LangGraph's saver
    interface (copy_thread, delete_for_runs, prune), our tables (migrated in setup) and the reply cache. The
    connection runs in autocommit mode: each statement is its own transaction, and operations of several
    statements take one explicitly."""

    _agent_ready = False

    def __init__(self, conn: sqlite3.Connection, *, serde=None) -> None:
        super().__init__(conn, serde=serde or Serializer())
        conn.isolation_level = None
        self.held = HeldWrites(conn, self.lock)  # holds no reference to the saver: its thread must not keep it alive
        # When the saver is collected, or at exit: a held write outlives no process (open_sqlite closes it first).
        self.close_held = weakref.finalize(self, self.held.close, quiet=True)

    @property
    def copier(self) -> WalCopier | None:
        """The WalCopier that copies this saver's WAL back (open_sqlite's), kept where the commits count for it."""
        return self.held.copier

    @copier.setter
    def copier(self, copier: WalCopier | None) -> None:
        self.held.copier = copier

    def setup(self) -> None:
        super().setup()
        if not self._agent_ready:
            migrate_sqlite(self.conn)
            self.conn.commit()
            self._agent_ready = True

    @contextmanager
    def cursor(self, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        with super().cursor(transaction) as cur:
            self.held.commit()  # what reads through it (threads, links) sees every write put before
            yield cur

    @cached_property
    def response_cache(self) -> SqliteCache:
        return SqliteCache(self.conn, self.lock, self)

    def _run(self, plan: Plan, begin: str | None = None) -> Any:
        """Runs a plan under the saver's lock, in one transaction when `begin` says how to start it."""
        with self.lock:
            self.setup()
            self.held.commit()  # a read sees, and a delete or copy takes along, every write put before it
            result = _run_plan(self.conn, plan, begin)
            if begin == "BEGIN IMMEDIATE" and self.copier is not None:
                self.copier.committed(INLINE_CHECKPOINT_COMMITS)  # a copy, delete or prune: many pages at once
            return result

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._run(self._get_tuple_plan(config), "BEGIN")

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        yield from self._run(self._list_plan(config, filter, before, limit), "BEGIN")

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        # Encoded before taking the lock, so it overlaps another call's I/O (puts of a thread come in order).
        row, encoded = self._checkpoint_row(config, checkpoint, metadata, new_versions)
        sql, params = self._put_statement(row, metadata)
        with self.lock:
            self.setup()
            refused = self.held.put_row(sql, params, row)  # with the step's writes (HeldWrites)
            self.held.raise_refused(row[0])
        if refused is not None:
            raise self._not_stored(row, refused)
        self.chains.remember(row[0], row[1], encoded)
        return next_config(config, checkpoint)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        """Held for the next put's transaction (HeldWrites); an error's or interrupt's committed at once."""
        if writes:
            sql, params = self._writes_statement(config, writes, task_id, task_path)
            with self.lock:
                self.setup()
                if not self.held.stopped and not special(writes):
                    self.held.hold(sql, params)
                    return
                refused = self.held.commit(lambda: _write_rows(self.conn, sql, params))
            if refused:
                raise thread_deleted(params[0])

    def revive(self, thread_id: str) -> None:
        with self.lock:
            self.setup()
            self.held.commit()
            self.conn.execute(REVIVE, (str(thread_id),))

    def delete_thread(self, thread_id: str) -> None:
        self._run(self._delete_plan([str(thread_id)], final=True), "BEGIN IMMEDIATE")
        self.chains.forget([thread_id])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) made by these runs; the values they store stay for the
        checkpoints of other runs that share them (delete_thread and prune remove them with the thread)."""
        if run_ids:
            self._run(self._delete_runs_plan([str(r) for r in run_ids]), "BEGIN IMMEDIATE")

    def copy_thread(self, source_thread_id: str, target_thread_id: str, *, up_to: str | None = None,
                    metadata: dict | None = None) -> None:
        """Copy a thread, or with `up_to` one lineage of it: that checkpoint, its ancestors, their pending
        writes (except the writes of `up_to` itself, which belong to the step after it), the subgraph
        checkpoints under them, and the values they refer to. Checkpoint ids stay the same; `metadata` is
        added to every copied checkpoint's (e.g. branch_of), in one transaction with the copy."""
        plan = self._copy_plan(str(source_thread_id), str(target_thread_id), up_to, metadata)
        self._run(plan, "BEGIN IMMEDIATE")
        self.chains.forget([target_thread_id])

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """"delete" removes the threads; "keep_latest" keeps each namespace's latest checkpoint (with its
        pending writes, every value it refers to, and no parent) and deletes the rest. Refuses threads that
        use a DeltaChannel, whose values are rebuilt from older checkpoints."""
        if thread_ids := prune_args(thread_ids, strategy):
            self._run(self._prune_plan(thread_ids, strategy), "BEGIN IMMEDIATE")
            self.chains.forget(thread_ids)

    def get_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]):
        # The official fast path reads the official row format; ours walks get_tuple, which reads ours.
        return BaseCheckpointSaver.get_delta_channel_history(self, config=config, channels=channels)


class AsyncSqlite(SyncWrappers, _Rows, AsyncSqliteSaver):
    """The async twin of Sqlite, on aiosqlite (opened in autocommit mode by open_async_sqlite). With `inline`,
    a connection to the same file opened by inline_connection (open_async_sqlite does), aput and aput_writes
    run on the event loop's thread (INLINE_PRAGMAS); without, on aiosqlite's thread like everything else."""

    _agent_ready = False
    inline: sqlite3.Connection | None = None
    copier: WalCopier | None = None
    # aput_writes' INSERTs held for the next aput's transaction (open_async_sqlite: on the inline connection,
    # under the copier's lock), as the sync saver's (HeldWrites); None: each committed at once.
    held: HeldWrites | None = None
    _inline_commits = 0

    def __init__(self, conn, *, serde=None) -> None:
        super().__init__(conn, serde=serde or Serializer())

    async def setup(self) -> None:
        if self.conn.isolation_level is not None:
            raise StorageError("AsyncSqlite needs a connection in autocommit mode: "
                               "aiosqlite.connect(path, isolation_level=None)")
        await super().setup()
        if not self._agent_ready:
            async with self.lock:
                await amigrate_sqlite(self.conn)
                await self.conn.commit()
            self._agent_ready = True

    @cached_property
    def response_cache(self) -> AsyncSqliteCache:
        return AsyncSqliteCache(self.conn, self.lock, self)

    async def _run(self, plan: Plan, begin: str | None = None) -> Any:
        await self.setup()
        async with self.lock:
            return await self._in_thread(self._after_held, _run_plan, plan, begin)

    def _after_held(self, conn: sqlite3.Connection, fn, *args) -> Any:
        """fn(conn, *args) on aiosqlite's thread, after committing the held writes (a read sees, and a delete
        or copy takes along, every write put before it)."""
        held = self.held
        if held is not None:
            with held.lock:
                held.commit(conn=conn)
        return fn(conn, *args)

    async def _in_thread(self, fn, *args) -> Any:
        """fn(the sqlite3 connection, *args) in one hop to aiosqlite's thread (cache.in_aiosqlite_thread; saver
        calls replayed as bench/calls.py does: aput 355 -> 241 us per step, CPU -31%). A whole transaction so
        runs at once, and a cancelled caller cannot leave it open between two hops."""
        return await in_aiosqlite_thread(self.conn, fn, *args)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._run(self._get_tuple_plan(config), "BEGIN")

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        for tup in await self._run(self._list_plan(config, filter, before, limit), "BEGIN"):
            yield tup

    async def _write(self, fn, *args) -> Any:
        """fn(a sqlite3 connection, *args), a write of one autocommit statement (and a read after it): on the
        inline connection when there is one and the database is not locked, else on aiosqlite's thread.
        Either way it has committed when this returns. A statement refused as locked changed nothing, so it
        runs again on the thread, waiting for the lock."""
        await self.setup()
        async with self.lock:
            if self.inline is not None:
                copier = self.copier
                if copier is None or copier.lock.acquire(blocking=False):
                    try:
                        result = self._with_held(self.inline, fn, *args)
                    except sqlite3.OperationalError as exc:
                        if "locked" not in str(exc):
                            raise
                    else:
                        self._inline_commits += 1
                        return result
                    finally:
                        if copier is not None:
                            copier.lock.release()
            return await self._in_thread(_after_copy, self.copier, self._with_held, fn, *args)

    def _with_held(self, conn: sqlite3.Connection, fn, *args) -> Any:
        """fn(conn, *args) in one transaction with the held writes (called holding the copier's lock); counted
        for the WalCopier."""
        if self.held is not None:
            if fn is _put_row:  # a checkpoint, with the writes of its parent (HeldWrites.put_row)
                return self.held.put_row(*args, conn=conn)
            return self.held.commit(lambda: fn(conn, *args), conn)
        result = fn(conn, *args)
        if self.copier is not None:
            self.copier.committed()
        return result

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        """Held for the next aput's transaction (HeldWrites), unless the copier holds its lock this moment; an
        error's or interrupt's committed at once."""
        if writes:
            sql, params = self._writes_statement(config, writes, task_id, task_path)
            held = self.held
            if held is not None and not held.stopped and not special(writes) and held.lock.acquire(blocking=False):
                try:
                    held.hold(sql, params)
                    return
                finally:
                    held.lock.release()
            if await self._write(_write_rows, sql, params):
                raise thread_deleted(params[0])

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        row, encoded = self._checkpoint_row(config, checkpoint, metadata, new_versions)
        sql, params = self._put_statement(row, metadata)
        refused = await self._write(_put_row, sql, params, row)
        if self.held is not None:
            self.held.raise_refused(row[0])
        if refused is not None:
            raise self._not_stored(row, refused)
        self.chains.remember(row[0], row[1], encoded)
        return next_config(config, checkpoint)

    async def arevive(self, thread_id: str) -> None:
        await self.setup()
        async with self.lock:
            await self._in_thread(self._after_held, _revive, str(thread_id))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(self._delete_plan([str(thread_id)], final=True), "BEGIN IMMEDIATE")
        self.chains.forget([thread_id])

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        if run_ids:
            await self._run(self._delete_runs_plan([str(r) for r in run_ids]), "BEGIN IMMEDIATE")

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str, *, up_to: str | None = None,
                           metadata: dict | None = None) -> None:
        plan = self._copy_plan(str(source_thread_id), str(target_thread_id), up_to, metadata)
        await self._run(plan, "BEGIN IMMEDIATE")
        self.chains.forget([target_thread_id])

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        if thread_ids := prune_args(thread_ids, strategy):
            await self._run(self._prune_plan(thread_ids, strategy), "BEGIN IMMEDIATE")
            self.chains.forget(thread_ids)

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


def _locked(exc: sqlite3.OperationalError, deadline: float) -> bool:
    return "locked" in str(exc) and time.monotonic() < deadline


def _retry_locked(statement):
    """Switching a new file to WAL needs an exclusive lock, and SQLite reports "database is locked" at once
    instead of waiting when another process opens the same new file: retried for up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as exc:
            if not _locked(exc, deadline):
                raise
            time.sleep(0.02)


async def _aretry_locked(statement):
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return await statement()
        except sqlite3.OperationalError as exc:
            if not _locked(exc, deadline):
                raise
            await asyncio.sleep(0.02)


def _fetch_all(conn):
    async def execute(sql: str, params) -> list:
        async with conn.execute(sql, params) as cur:
            return list(await cur.fetchall())
    return execute


@contextmanager
def open_sqlite(path: str, create: bool = True, options: SaverOptions | None = None) -> Iterator[Sqlite]:
    absolute = check_path(path, create)
    try:
        # The saver serializes access with its own lock, so one connection may serve many threads.
        conn = sqlite3.connect(absolute, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None)
    except sqlite3.Error as exc:
        raise _storage_error(path, exc) from exc
    copier = saver = None
    try:
        try:
            for pragma in PRAGMAS:
                _retry_locked(lambda: conn.execute(pragma))
            saver = Sqlite(conn)
            saver.setup()
            saver.serde = run_plan(serde_plan(options or SaverOptions(), absolute),
                                   lambda sql, params: conn.execute(sql, params).fetchall())
            for pragma in INLINE_PRAGMAS:  # its commits are a run's, as the async saver's inline connection's
                conn.execute(pragma)
            copier = saver.copier = WalCopier(absolute, saver.lock)
        except sqlite3.Error as exc:
            raise _storage_error(path, exc) from exc
        yield saver
    finally:
        # before the copier: its commit is counted, and copied back at close
        failure = _close_held(saver.held, saver.close_held) if saver is not None else None
        if copier is not None:  # first: the saver's connection, closed last, copies the WAL back
            saver.copier = None
            copier.close()
        with saver.lock if saver is not None else contextlib.nullcontext():
            conn.close()  # not while a put_writes of another thread still uses it (a crash, review found)
        if failure is not None and sys.exc_info()[1] is None:
            raise _storage_error(path, failure) from failure


@asynccontextmanager
async def open_async_sqlite(path: str, create: bool = True,
                            options: SaverOptions | None = None) -> AsyncIterator[AsyncSqlite]:
    import aiosqlite

    absolute = check_path(path, create)
    try:
        conn = await aiosqlite.connect(absolute, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise _storage_error(path, exc) from exc
    inline = copier = held = close_held = None
    try:
        try:
            for pragma in PRAGMAS:
                await _aretry_locked(lambda: conn.execute(pragma))
            saver = AsyncSqlite(conn)
            await saver.setup()
            saver.serde = await arun_plan(serde_plan(options or SaverOptions(), absolute), _fetch_all(conn))
            inline = saver.inline = inline_connection(absolute)
            copier = saver.copier = WalCopier(absolute, threading.Lock())
            held = saver.held = HeldWrites(inline, copier.lock, waits=False)
            held.copier = copier
            close_held = weakref.finalize(saver, held.close, quiet=True)  # at exit, if never closed
        except sqlite3.Error as exc:
            raise _storage_error(path, exc) from exc
        yield saver
    finally:
        if held is not None:
            saver.held = None
        failure = _close_held(held, close_held)  # before the copier and the inline connection it commits on
        if copier is not None:  # waits for a copy under way (tens of ms at most), once
            saver.copier = None
            copier.close()
        if inline is not None:  # first: aiosqlite's connection, closed last, copies the WAL back
            saver.inline = None
            inline.close()
        await conn.close()
        if failure is not None and sys.exc_info()[1] is None:
            raise _storage_error(path, failure) from failure
