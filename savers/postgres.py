"""Postgres savers (sync and async) on top of langgraph-checkpoint-postgres, over a psycopg connection pool.

Connection problems surface before any work starts, as one StorageError naming host and port.
"""

from __future__ import annotations

import asyncio
import math
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, nullcontext
from functools import cached_property, lru_cache, partial
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres._ainternal import get_connection as aget_connection
from langgraph.checkpoint.postgres._internal import get_connection
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from savers import pgexec
from savers.cache import AsyncPostgresCache, PostgresCache
from savers.compact import (
    dump_metadata,
    decode_pending,
    unreadable,
    next_config,
    packed_write_params,
    unseal_writes,
    write_params,
    WRITE_PARAMS,
    DELTA,
    Chains,
    Decoder,
    MissingBase,
    delta_base,
    inner_of,
    context,
    copy_metadata,
    dump,
    encrypted,
    open_sealed,
    reseal,
    reseal_metadata,
    matches,
    pack_versions,
    seal,
    seal_metadata,
    sealed_text,
    sealing,
    split_filter,
    split_values,
    unpack_versions,
    unseal,
    unseal_metadata,
)
from savers.errors import StorageError
from savers.keyring import arun_plan, run_plan, serde_plan
from savers.migrations import amigrate_postgres, migrate_postgres
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

# Unreachable servers must fail within seconds, not hang on the OS default (minutes).
CONNECT_TIMEOUT_S = 5
# Pool connections beyond the first close after this long idle, before the idle cutoffs of poolers, NAT
# gateways and load balancers (pgbouncer's server_idle_timeout: 600 s; cloud NATs: 240-350 s); every
# connection is replaced after max_lifetime (the saver's own one too: _idle_and_open).
POOL_MAX_IDLE_S = 180.0
POOL_MAX_LIFETIME_S = 1800.0
# TCP keepalives, unless the URL sets its own: an idle connection keeps its NAT entry, and one whose peer
# vanished without a word (a failover, a dropped route) is found dead within about a minute, by the kernel,
# so the pool's check sees it before a statement would hang on it.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
# Serializes schema setup across processes: a lease (savers.locks), not a session advisory lock, which
# behind a transaction-mode pooler stays on whichever server connection took it. Waiters poll rather than
# block: a blocked statement is an open transaction, and the official migrations' CREATE INDEX
# CONCURRENTLY waits for every open transaction - a deadlock.
SETUP_LEASE = "setup"
SETUP_WAIT_S = 60


def _setup_pause(url: str, started: float) -> float:
    """The pause before trying again while another process sets the schema up; an error if that takes
    unreasonably long."""
    if time.monotonic() - started > SETUP_WAIT_S:
        raise StorageError(f"Postgres at {_where(url)}: another process has been setting up the schema for "
                           f"{SETUP_WAIT_S} s; try again, or look for a stuck `agent` process")
    return 0.05


# autocommit and dict rows are what the official savers expect. Server-side prepared statements are an
# option (SaverOptions.prepare_threshold): at once by default, which makes repeated checkpoint writes cheap.
CONNECTION_KWARGS = {"autocommit": True, "row_factory": dict_row}


# -- SQL: one statement per saver call on the hot path (one round trip, one transaction) ---------------------

_CHECKPOINT_COLUMNS = "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata"
_WRITE_COLUMNS = "thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob"
# A write naming a checkpoint of a deleted thread (savers/migrations.py agent_tombstones); parameters: the
# thread id and the checkpoint id the write names (for a put, its parent). Such writes store nothing.
_DELETED = "SELECT 1 FROM agent_tombstones WHERE thread_id = %s AND %s <= last_checkpoint_id"
_UPSERT_CHECKPOINT = (f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}) SELECT %s, %s, %s, %s, %s, %s "
                      f"WHERE NOT EXISTS ({_DELETED}) ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) "
                      "DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata")
ONE_WRITER_INDEX = "agent_one_writer"
TOMBSTONE_SQL = ("INSERT INTO agent_tombstones (thread_id, last_checkpoint_id) SELECT thread_id, max(checkpoint_id) "
                 "FROM checkpoints WHERE thread_id = ANY(%s) GROUP BY thread_id ON CONFLICT (thread_id) DO UPDATE "
                 "SET last_checkpoint_id = GREATEST(agent_tombstones.last_checkpoint_id, EXCLUDED.last_checkpoint_id)")
REVIVE_SQL = "DELETE FROM agent_tombstones WHERE thread_id = %s"
PATCH_METADATA_SQL = "UPDATE checkpoints SET metadata = metadata || %s WHERE thread_id = %s"


@lru_cache(maxsize=64)
def put_sql(n_blobs: int) -> str:
    """The checkpoint and its n values stored apart, in one statement (a data-modifying CTE always runs).
    Scalar parameters, one VALUES row each: psycopg dumps them in C, where arrays are dumped in Python."""
    if not n_blobs:
        return _UPSERT_CHECKPOINT
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * n_blobs)
    return (f"WITH blobs AS (INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob, "
            f"base) SELECT * FROM (VALUES {rows}) v WHERE NOT EXISTS ({_DELETED}) "
            "ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING) " + _UPSERT_CHECKPOINT)


@lru_cache(maxsize=64)
def writes_sql(n_writes: int, upsert: bool) -> str:
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s)"] * n_writes)
    conflict = ("DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob"
                if upsert else "DO NOTHING")
    return (f"INSERT INTO checkpoint_writes ({_WRITE_COLUMNS}) SELECT * FROM (VALUES {rows}) v "
            f"WHERE NOT EXISTS ({_DELETED}) ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) "
            f"{conflict}")


_SELECT = f"""
SELECT {_CHECKPOINT_COLUMNS},
    (SELECT array_agg(array[w.task_id::bytea, w.channel::bytea, w.type::bytea, w.blob,
                            convert_to(w.task_path, 'UTF8'), w.idx::text::bytea])
     FROM checkpoint_writes w WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns
       AND w.checkpoint_id = c.checkpoint_id) AS writes
FROM checkpoints c """
SELECT_ONE_SQL = _SELECT + "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s"
SELECT_LATEST_SQL = _SELECT + "WHERE thread_id = %s AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1"
# A page of a thread's every namespace (Postgres._list_query): the thread's namespaces, one index lookup each;
# the newest keys of each before the page's end ({where}), in the primary key's order, merged; then those
# rows, each looked up by its key (LIMIT 1 keeps the planner from making it a join that reads every row of
# the thread).
SELECT_EVERY_NAMESPACE = """
WITH RECURSIVE ns(v) AS (
    SELECT min(checkpoint_ns) FROM checkpoints WHERE thread_id = %s
    UNION ALL
    SELECT (SELECT min(checkpoint_ns) FROM checkpoints WHERE thread_id = %s AND checkpoint_ns > ns.v)
    FROM ns WHERE ns.v IS NOT NULL
), page AS (
    SELECT k.checkpoint_ns, k.checkpoint_id FROM ns CROSS JOIN LATERAL (
        SELECT checkpoint_ns, checkpoint_id FROM checkpoints {where} AND checkpoint_ns = ns.v
        ORDER BY checkpoint_id DESC LIMIT %s) k
    ORDER BY k.checkpoint_id DESC LIMIT %s
)
SELECT listed.* FROM page CROSS JOIN LATERAL (""" + _SELECT + """WHERE thread_id = %s
    AND checkpoint_ns = page.checkpoint_ns AND checkpoint_id = page.checkpoint_id LIMIT 1) listed
ORDER BY listed.checkpoint_id DESC"""
# Blobs asked for, as parallel arrays of (namespace, channel, version), and every base their deltas extend.
SELECT_BLOBS_SQL = """
WITH RECURSIVE chain AS (
    SELECT b.checkpoint_ns, b.channel, b.version, b.type, b.blob, b.base
    FROM unnest(%(ns)s::text[], %(channels)s::text[], %(versions)s::text[]) AS w(checkpoint_ns, channel, version)
    JOIN checkpoint_blobs b ON b.thread_id = %(thread_id)s AND b.checkpoint_ns = w.checkpoint_ns
      AND b.channel = w.channel AND b.version = w.version
    UNION ALL
    SELECT b.checkpoint_ns, b.channel, b.version, b.type, b.blob, b.base FROM chain c
    JOIN checkpoint_blobs b ON b.thread_id = %(thread_id)s AND b.checkpoint_ns = c.checkpoint_ns
      AND b.channel = c.channel AND b.version = c.base
)
SELECT DISTINCT checkpoint_ns, channel, version, type, blob FROM chain"""
TABLES = ("checkpoints", "checkpoint_writes", "checkpoint_blobs")
DELETE_THREADS_SQL = tuple(f"DELETE FROM {t} WHERE thread_id = ANY(%s)" for t in TABLES)
DELETE_RUNS_SQL = """
WITH gone AS (
    DELETE FROM checkpoints WHERE metadata ->> 'run_id' = ANY(%s)
    RETURNING thread_id, checkpoint_ns, checkpoint_id
)
DELETE FROM checkpoint_writes w USING gone g
WHERE w.thread_id = g.thread_id AND w.checkpoint_ns = g.checkpoint_ns AND w.checkpoint_id = g.checkpoint_id"""
SELECT_DELTA_THREADS_SQL = ("SELECT DISTINCT thread_id FROM checkpoints WHERE thread_id = ANY(%s) "
                            "AND metadata ? 'counters_since_delta_snapshot'")
SELECT_HEADS_SQL = (_SELECT + "WHERE thread_id = %s AND checkpoint_id = (SELECT max(checkpoint_id) FROM checkpoints k "
                    "WHERE k.thread_id = c.thread_id AND k.checkpoint_ns = c.checkpoint_ns)")
EXISTS_THREAD_SQL = "SELECT 1 FROM checkpoints WHERE thread_id = %s LIMIT 1"
SELECT_LINEAGE_SQL = """
WITH RECURSIVE lineage AS (
    SELECT checkpoint_id, parent_checkpoint_id FROM checkpoints
    WHERE thread_id = %(source)s AND checkpoint_ns = '' AND checkpoint_id = %(up_to)s
    UNION
    SELECT c.checkpoint_id, c.parent_checkpoint_id FROM lineage l JOIN checkpoints c
      ON c.thread_id = %(source)s AND c.checkpoint_ns = '' AND c.checkpoint_id = l.parent_checkpoint_id
)
SELECT checkpoint_id FROM lineage"""
_CHECKPOINT_REST = _CHECKPOINT_COLUMNS.split(", ", 1)[1]
_WRITE_REST = _WRITE_COLUMNS.split(", ", 1)[1]
_BLOB_REST = "checkpoint_ns, channel, version, type, blob, base"
COPY_ALL_SQL = (
    f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}) SELECT %(target)s, {_CHECKPOINT_REST} FROM checkpoints "
    "WHERE thread_id = %(source)s",
    f"INSERT INTO checkpoint_writes ({_WRITE_COLUMNS}) SELECT %(target)s, {_WRITE_REST} FROM checkpoint_writes "
    "WHERE thread_id = %(source)s",
    f"INSERT INTO checkpoint_blobs (thread_id, {_BLOB_REST}) SELECT %(target)s, {_BLOB_REST} FROM checkpoint_blobs "
    "WHERE thread_id = %(source)s",
)
# A lineage's root-namespace checkpoints, and the subgraph checkpoints made during the steps from them (not
# from the last one: its next step is not part of the lineage).
_IN_LINEAGE = ("((c.checkpoint_ns = '' AND c.checkpoint_id = ANY(%(root)s)) OR "
               "(c.checkpoint_ns <> '' AND c.metadata -> 'parents' ->> '' = ANY(%(sub)s)))")
COPY_LINEAGE_SQL = (
    f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}) SELECT %(target)s, {_CHECKPOINT_REST} FROM checkpoints c "
    f"WHERE c.thread_id = %(source)s AND {_IN_LINEAGE}",
    # Their writes, but not the last checkpoint's: they belong to the step after it.
    f"INSERT INTO checkpoint_writes ({_WRITE_COLUMNS}) SELECT %(target)s, {_WRITE_REST} FROM checkpoint_writes w "
    "WHERE w.thread_id = %(source)s AND NOT (w.checkpoint_ns = '' AND w.checkpoint_id = %(up_to)s) AND EXISTS ("
    "SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id AND c.checkpoint_ns = w.checkpoint_ns "
    f"AND c.checkpoint_id = w.checkpoint_id AND {_IN_LINEAGE})",
    COPY_ALL_SQL[2],
)
# What each statement of COPY_ALL_SQL / COPY_LINEAGE_SQL copies; with encryption on, each is run as a SELECT
# (_as_select) and its rows inserted again with COPY_INSERT, sealed for the target thread.
COPY_KINDS = ("checkpoint", "write", "value")
COPY_INSERT = {
    "checkpoint": f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
    "write": f"INSERT INTO checkpoint_writes ({_WRITE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
    "value": f"INSERT INTO checkpoint_blobs (thread_id, {_BLOB_REST}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
}


def _as_select(copy_sql: str) -> str:
    """The source rows a COPY statement would insert: "INSERT ... SELECT %(target)s, cols FROM ..." as
    "SELECT thread_id, cols FROM ..."."""
    return "SELECT thread_id, " + copy_sql.split(" SELECT %(target)s, ", 1)[1]


INSERT_BLOB_SQL = (f"INSERT INTO checkpoint_blobs (thread_id, {_BLOB_REST}) VALUES (%s, %s, %s, %s, %s, %s, NULL) "
                   "ON CONFLICT DO NOTHING")
INSERT_CHECKPOINT_SQL = f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}) VALUES (%s, %s, %s, NULL, %s, %s)"
INSERT_WRITE_SQL = f"INSERT INTO checkpoint_writes ({_WRITE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"


@asynccontextmanager
async def _anull() -> AsyncIterator[None]:
    yield


# The key of the checkpoint column's only entry when values are sealed (compressed or encrypted).
SEALED_CHECKPOINT = "~sealed"


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=_dumps)


def _dumps(value: Any) -> bytes:
    return dump_metadata(value)  # lone surrogates dropped, as the SQLite saver drops them, instead of failing


class _Rows:
    """Rows in and out of the Postgres tables, shared by the sync and async savers (which only do the I/O).

    Values stored apart (checkpoint_blobs) and writes are sealed (compressed, encrypted) one by one. The
    checkpoint column is jsonb: when values are sealed it holds {SEALED_CHECKPOINT: sealed text} (no SQL reads
    inside it), and with encryption on metadata keeps in clear only the keys filters need
    (savers.compact.CLEAR_METADATA)."""

    serde: Any

    def __init__(self, conn, *args, serde=None, **kwargs) -> None:
        super().__init__(conn, *args, serde=serde or Serializer(), **kwargs)

    @cached_property
    def chains(self) -> Chains:
        return Chains()

    def with_allowlist(self, extra_allowlist):
        return saver_with_allowlist(self, extra_allowlist)

    # -- writing ---------------------------------------------------------------------------------------

    def _put_params(self, config, checkpoint, metadata, new_versions) -> tuple[str, list, Any]:
        configurable = config["configurable"]
        thread_id, ns = str(configurable["thread_id"]), configurable["checkpoint_ns"]
        inline, apart = split_values(checkpoint["channel_values"])
        versions = checkpoint["channel_versions"]
        parent = configurable.get("checkpoint_id")
        if parent is None:
            self.chains.start(thread_id, ns)
        encoded = self.chains.encode_checkpoint(inner_of(self.serde), thread_id, ns, apart, versions, new_versions)
        params: list = []
        for channel, blob in encoded.blobs.items():
            version = str(versions[channel])
            params += (thread_id, ns, channel, version,
                       *seal(self.serde, blob.type, blob.data, context("value", thread_id, ns, channel, version)),
                       blob.base)
        if encoded.blobs:
            params += (thread_id, parent)
        params += (thread_id, ns, checkpoint["id"], parent,
                   self._checkpoint_column(pack_versions({**checkpoint, "channel_values": inline}),
                                           context("checkpoint", thread_id, ns, checkpoint["id"])),
                   _jsonb(seal_metadata(self.serde, get_serializable_checkpoint_metadata(config, metadata),
                                        context("metadata", thread_id, ns, checkpoint["id"]))),
                   thread_id, parent)
        return put_sql(len(encoded.blobs)), params, encoded

    def _writes_params(self, config, writes, task_id: str, task_path: str) -> tuple[str, list]:
        if (params := packed_write_params(self.chains, self.serde, config, writes, task_id, task_path)) is not None:
            return writes_sql(1, False), [*params, params[0], params[2]]
        params, special = write_params(self.chains, self.serde, config, writes, task_id, task_path)
        return writes_sql(len(params) // WRITE_PARAMS, special), [*params, params[0], params[2]]

    @staticmethod
    def _refused(exc: psycopg.errors.UniqueViolation, config) -> Exception:
        """A put the one-writer index refused, as the error a user reads; other violations as they are."""
        if exc.diag.constraint_name != ONE_WRITER_INDEX:
            return exc
        return writer_conflict(str(config["configurable"]["thread_id"]), config["configurable"].get("checkpoint_id"))

    # -- reading ---------------------------------------------------------------------------------------

    def _checkpoint_column(self, compact: dict, where: bytes) -> Jsonb:
        return _jsonb({SEALED_CHECKPOINT: sealed_text(self.serde, compact, where)} if sealing(self.serde)
                      else compact)

    def _unpacked(self, rows) -> list:
        """Rows with their checkpoint column opened (unsealed), versions unpacked, and their pending writes
        unsealed once, as "pending" (_raw_writes)."""
        return [{**row, "checkpoint": unpack_versions(self._open_checkpoint(row["checkpoint"], context(
            "checkpoint", row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"]))),
                 "pending": self._raw_writes(row)} for row in rows]

    def _open_checkpoint(self, column: dict, where: bytes) -> dict:
        if isinstance(sealed := column.get(SEALED_CHECKPOINT), str):
            return dict(open_sealed(self.serde, sealed, where))
        unseal(self.serde, "jsonb", b"")  # where encryption is on, a plaintext checkpoint is refused
        return dict(column)

    def _raw_writes(self, row) -> list[tuple]:
        """(task_id, channel, type, blob, task_path, idx) of a row's pending writes, unsealed, a packed row
        (compact.PACKED) as the writes it stands for."""
        return unseal_writes(self.serde, row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"],
                             [(t.decode(), c.decode(), ty.decode(), v, p.decode(), int(i))
                              for t, c, ty, v, p, i in row["writes"] or []])

    @staticmethod
    def _wanted(rows) -> dict[str, list]:
        """Parameters for SELECT_BLOBS_SQL: every channel of the (unpacked) rows that is not inline, and the
        bases of their writes (rows of one thread)."""
        keys = set()
        for row in rows:
            writes = row["pending"]
            checkpoint, ns = row["checkpoint"], row["checkpoint_ns"]
            inline = checkpoint.get("channel_values") or {}
            keys.update((ns, ch, str(v)) for ch, v in checkpoint["channel_versions"].items() if ch not in inline)
            keys.update((ns, w[1], base) for w in writes if (base := delta_base(w[2], w[3])) is not None)
        ns, channels, versions = (list(x) for x in zip(*keys)) if keys else ([], [], [])
        return {"thread_id": rows[0]["thread_id"] if rows else "", "ns": ns, "channels": channels,
                "versions": versions}

    def _blob_map(self, thread_id: str, blob_rows) -> dict:
        by_ns: dict[str, dict] = {}
        for r in blob_rows:
            where = context("value", thread_id, r["checkpoint_ns"], r["channel"], r["version"])
            stored = (r["type"], r["blob"]) if r["type"] == "empty" else unseal(self.serde, r["type"], r["blob"], where)
            by_ns.setdefault(r["checkpoint_ns"], {})[(r["channel"], r["version"])] = stored
        return by_ns

    def _tuple(self, row, writes, blobs_by_ns: dict, *, seed: bool, decoder: Decoder | None = None) -> CheckpointTuple:
        """`decoder`: its namespace's, shared by the checkpoints of a list() (compact.Decoder)."""
        thread_id, ns, checkpoint_id = row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"]
        blobs = blobs_by_ns.get(ns, {})
        decoder = decoder or Decoder(self.serde, blobs)
        checkpoint = row["checkpoint"]
        values = dict(checkpoint.get("channel_values") or {})
        tips = {}
        try:
            for channel, version in checkpoint["channel_versions"].items():
                key = (channel, str(version))
                if channel not in values and key in blobs and blobs[key][0] != "empty":
                    values[channel] = decoder.value(channel, *blobs[key], key=key[1])
                    if seed and (tip := decoder.list_tip(channel, key[1], *blobs[key])):
                        tips[channel] = tip
            pending = decode_pending(decoder, writes)
        except MissingBase as exc:
            raise unreadable(checkpoint_id, thread_id, exc) from None
        if seed:
            self.chains.seed(thread_id, ns, {key: key[1] for key in blobs}, tips, blobs.keys())
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}
        parent_id = row["parent_checkpoint_id"]
        parent = ({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent_id}}
                  if parent_id else None)
        return CheckpointTuple(config, {**checkpoint, "channel_values": values},
                               unseal_metadata(self.serde, row["metadata"], context("metadata", thread_id, ns, checkpoint_id)),
                               parent, pending)

    def _list_query(self, config, filter, before, limit) -> tuple[str, list, dict]:
        """The list query, and the filter on sealed metadata keys left to apply after reading (then the
        limit is applied after it too)."""
        config, (filter, sealed) = text_thread(config), split_filter(self.serde, filter)
        where, args = self._search_where(config, filter, before)
        if limit is None or sealed:
            return _SELECT + where + " ORDER BY checkpoint_id DESC", list(args), sealed
        if config and config["configurable"].get("checkpoint_ns") is None:
            # A page of one thread's checkpoints in every namespace, as an export lists a thread: the primary
            # key orders checkpoints within a namespace only, so ordered by checkpoint_id alone every
            # checkpoint of the thread before `before` was read and sorted for each page (1.7 ms at the
            # middle of 3,000 steps, 0.2 ms this way).
            thread_id = config["configurable"]["thread_id"]
            return (SELECT_EVERY_NAMESPACE.format(where=where),
                    [thread_id, thread_id, *args, int(limit), int(limit), thread_id], sealed)
        return _SELECT + where + " ORDER BY checkpoint_id DESC LIMIT %s", [*args, int(limit)], sealed

    @staticmethod
    def _listed(rows, loaded: dict, sealed: dict, limit: int | None) -> list[CheckpointTuple]:
        tuples = [tup for row in rows
                  if matches((tup := loaded[(row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"])]).metadata,
                             sealed)]
        return tuples if limit is None else tuples[:limit]

    def _moved(self, kind: str, row: dict, target: str) -> tuple:
        """A row of checkpoints, checkpoint_writes or checkpoint_blobs (COPY_KINDS) for another thread, what
        it seals bound to the new row (savers.compact.context)."""
        ns = row["checkpoint_ns"]
        if kind == "checkpoint":
            cid = row["checkpoint_id"]
            column = row["checkpoint"]
            if isinstance(sealed := column.get(SEALED_CHECKPOINT), str):
                column = {SEALED_CHECKPOINT: sealed_text(self.serde, open_sealed(
                    self.serde, sealed, context("checkpoint", row["thread_id"], ns, cid)), context("checkpoint", target, ns, cid))}
            metadata = reseal_metadata(self.serde, row["metadata"], context("metadata", row["thread_id"], ns, cid),
                                       context("metadata", target, ns, cid))
            return target, ns, cid, row["parent_checkpoint_id"], _jsonb(column), _jsonb(metadata)
        if kind == "write":
            key = (ns, row["checkpoint_id"], row["task_id"], row["idx"])
            return (target, ns, row["checkpoint_id"], row["task_id"], row["task_path"], row["idx"], row["channel"],
                    *reseal(self.serde, row["type"], row["blob"], "write", row["thread_id"], target, *key))
        key = (ns, row["channel"], row["version"])
        stored = (row["type"], row["blob"]) if row["type"] == "empty" else \
            reseal(self.serde, row["type"], row["blob"], "value", row["thread_id"], target, *key)
        return (target, *key, *stored, row["base"])

    def _tuples(self, rows, blob_rows, *, seed: bool) -> list[CheckpointTuple]:
        blobs = self._blob_map(rows[0]["thread_id"], blob_rows) if rows else {}
        decoders = {ns: Decoder(self.serde, ns_blobs) for ns, ns_blobs in blobs.items()}
        return [self._tuple(row, row["pending"], blobs, seed=seed, decoder=decoders.get(row["checkpoint_ns"]))
                for row in rows]

    def _kept_rows(self, tup: CheckpointTuple, row, writes_blobs: dict) -> list[tuple[str, tuple]]:
        """Statements that keep one checkpoint readable on its own: whole values, no parent."""
        thread_id, ns = row["thread_id"], row["checkpoint_ns"]
        checkpoint = row["checkpoint"]
        inline = checkpoint.get("channel_values") or {}
        values = tup.checkpoint["channel_values"]
        apart = {c: values[c] for c in checkpoint["channel_versions"] if c not in inline and c in values}
        encoded = self.chains.encode_checkpoint(inner_of(self.serde), thread_id, ns, apart,
                                                checkpoint["channel_versions"], {}, full=True)
        statements = []
        for c, b in encoded.blobs.items():
            version = str(checkpoint["channel_versions"][c])
            statements.append((INSERT_BLOB_SQL, (thread_id, ns, c, version,
                                                 *seal(self.serde, b.type, b.data, context("value", thread_id, ns, c, version)))))
        statements.append((INSERT_CHECKPOINT_SQL, (thread_id, ns, row["checkpoint_id"],
                                                   self._checkpoint_column(pack_versions(checkpoint), context(
                                                       "checkpoint", thread_id, ns, row["checkpoint_id"])),
                                                   _jsonb(row["metadata"]))))
        decoder = Decoder(self.serde, writes_blobs.get(ns, {}))
        for task_id, channel, type_, value, task_path, idx in row["pending"]:
            where = context("write", thread_id, ns, row["checkpoint_id"], task_id, idx)
            type_, value = dump(self.serde, decoder.value(channel, type_, value), where) if type_ == DELTA \
                else seal(self.serde, type_, value, where)
            statements.append((INSERT_WRITE_SQL, (thread_id, ns, row["checkpoint_id"], task_id, task_path, idx,
                                                  channel, type_, value)))
        return statements


class Postgres(_Rows, PostgresSaver):
    """The official PostgresSaver with compact storage (savers.compact), one statement per call on the hot
    path, every capability of LangGraph's saver interface (copy_thread, delete_for_runs, prune), our tables
    (migrated in setup) and the reply cache."""

    def setup(self) -> None:
        super().setup()
        with get_connection(self.conn) as conn:
            migrate_postgres(conn)

    @cached_property
    def response_cache(self) -> PostgresCache:
        return PostgresCache(self.conn, self)

    @cached_property
    def _lanes(self) -> dict[str, _Lane]:
        return _lanes(self.conn, self.lock, threading.Lock)

    @contextmanager
    def _cursor(self, *, pipeline: bool = False, lane: str = "main") -> Iterator[psycopg.Cursor]:
        """A cursor on a connection of the pool that the saver keeps for its own statements (they run one at
        a time per lane, under the lane's lock): no checkout per call. A dead one goes back for the pool to
        replace. put_writes has a lane of its own (_lanes)."""
        if not isinstance(self.conn, ConnectionPool):
            with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        with self._held(lane) as conn, conn.transaction() if pipeline else nullcontext(), \
                conn.cursor(binary=True, row_factory=dict_row) as cur:
            yield cur

    @contextmanager
    def _held(self, lane: str) -> Iterator[psycopg.Connection]:
        """The lane's connection of the saver's pool, under the lane's lock."""
        held = self._lanes[lane]
        with held.lock:
            if held.conn is not None and not _idle_and_open(held.conn):
                self.conn.putconn(held.conn)
                held.conn = None
            if held.conn is None:
                held.conn = self.conn.getconn()
            yield held.conn

    @contextmanager
    def _statements(self, lane: str = "main") -> Iterator[Callable[[str, Sequence], int]]:
        """For put and put_writes, under the lane's lock: a function that runs one statement through libpq
        (savers.pgexec) and returns its row count. On a connection of the caller's, through its cursor."""
        if not isinstance(self.conn, ConnectionPool):
            with super()._cursor() as cur:
                yield lambda sql, params: cur.execute(sql, params).rowcount
            return
        with self._held(lane) as conn:
            yield partial(pgexec.execute, conn)

    def close(self) -> None:
        """Gives the saver's connections back to the pool (before the pool closes)."""
        if not isinstance(self.conn, ConnectionPool):
            return
        for held in set(self._lanes.values()):
            with held.lock:
                if held.conn is not None:
                    self.conn.putconn(held.conn)
                    held.conn = None

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor]:
        with self._cursor() as cur, cur.connection.transaction():
            yield cur

    def _blobs(self, cur, wanted: dict) -> list:
        if not wanted["channels"]:
            return []
        return cur.execute(SELECT_BLOBS_SQL, wanted).fetchall()

    def _load(self, cur, rows, *, seed: bool) -> list[CheckpointTuple]:
        if not rows:
            return []
        rows = self._unpacked(rows)
        wanted = self._wanted(rows)
        return self._tuples(rows, self._blobs(cur, wanted), seed=seed)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id, ns = str(configurable["thread_id"]), configurable.get("checkpoint_ns", "")
        with self._cursor() as cur:
            if checkpoint_id := get_checkpoint_id(config):
                rows = cur.execute(SELECT_ONE_SQL, (thread_id, ns, checkpoint_id)).fetchall()
            else:
                rows = cur.execute(SELECT_LATEST_SQL, (thread_id, ns)).fetchall()
            tuples = self._load(cur, rows, seed=True)
        if not tuples and not checkpoint_id:  # nothing stored in this thread and namespace
            self.chains.start(thread_id, ns)
        return tuples[0] if tuples else None

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        query, params, sealed = self._list_query(config, filter, before, limit)
        with self._cursor() as cur:
            rows = cur.execute(query, params).fetchall()
            by_thread: dict[str, list] = {}
            for row in rows:
                by_thread.setdefault(row["thread_id"], []).append(row)
            loaded = {}
            for thread_rows in by_thread.values():
                for row, tup in zip(thread_rows, self._load(cur, thread_rows, seed=False)):
                    loaded[(row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"])] = tup
        for tup in self._listed(rows, loaded, sealed, limit):
            yield tup

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        # Encoded before taking the lock, so it overlaps another call's I/O (puts of a thread come in order).
        sql, params, encoded = self._put_params(config, checkpoint, metadata, new_versions)
        with self._statements() as run:
            try:
                stored = run(sql, params)
            except psycopg.errors.UniqueViolation as exc:
                raise self._refused(exc, config) from None
            if not stored:
                raise thread_deleted(str(config["configurable"]["thread_id"]))
            self.chains.remember(str(config["configurable"]["thread_id"]), config["configurable"]["checkpoint_ns"],
                                 encoded)
        return next_config(config, checkpoint)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        if not writes:
            return
        sql, params = self._writes_params(config, writes, task_id, task_path)
        with self._statements("writes") as run:
            if not run(sql, params) and run(_DELETED, params[-2:]):  # a SELECT's count: its rows
                raise thread_deleted(params[0])

    def revive(self, thread_id: str) -> None:
        with self._cursor() as cur:
            cur.execute(REVIVE_SQL, (str(thread_id),))

    def delete_thread(self, thread_id: str) -> None:
        with self._transaction() as cur:
            cur.execute(TOMBSTONE_SQL, ([str(thread_id)],))
            for sql in DELETE_THREADS_SQL:
                cur.execute(sql, ([str(thread_id)],))
        self.chains.forget([thread_id])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) made by these runs. Their stored values stay, since
        checkpoints of other runs may share them; delete_thread and prune remove them with the thread."""
        if run_ids:
            with self._cursor() as cur:
                cur.execute(DELETE_RUNS_SQL, ([str(r) for r in run_ids],))

    def copy_thread(self, source_thread_id: str, target_thread_id: str, *, up_to: str | None = None,
                    metadata: dict | None = None) -> None:
        """Copy a thread, or with `up_to` one lineage of it: that checkpoint, its ancestors, their pending
        writes (except the writes of `up_to` itself, which belong to the step after it), the subgraph
        checkpoints under them, and the values they store. Checkpoint ids stay the same; `metadata` is
        added to every copied checkpoint's (e.g. branch_of), in one transaction with the copy."""
        params = {"source": str(source_thread_id), "target": str(target_thread_id), "up_to": up_to}
        metadata = copy_metadata(self.serde, metadata)
        with self._transaction() as cur:
            if cur.execute(EXISTS_THREAD_SQL, (params["target"],)).fetchone():
                raise target_exists(params["target"])
            cur.execute(REVIVE_SQL, (params["target"],))
            if up_to is None:
                statements = COPY_ALL_SQL
            else:
                ids = [r["checkpoint_id"] for r in cur.execute(SELECT_LINEAGE_SQL, params).fetchall()]
                if not ids:
                    raise no_checkpoint(params["source"], up_to)
                params.update(root=ids, sub=[i for i in ids if i != up_to])
                statements = COPY_LINEAGE_SQL
            for kind, sql in zip(COPY_KINDS, statements):
                if encrypted(self.serde):  # values bound to their rows are sealed again for the copy's
                    if rows := cur.execute(_as_select(sql), params).fetchall():
                        cur.executemany(COPY_INSERT[kind], [self._moved(kind, r, params["target"]) for r in rows])
                else:
                    cur.execute(sql, params)
            if metadata:
                cur.execute(PATCH_METADATA_SQL, (_jsonb(metadata), params["target"]))
        self.chains.forget([params["target"]])

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """"delete" removes the threads; "keep_latest" keeps each namespace's latest checkpoint (with its
        pending writes, its values stored whole, and no parent) and deletes the rest, in one transaction.
        Refuses threads that use a DeltaChannel, whose values are rebuilt from older checkpoints."""
        thread_ids = prune_args(thread_ids, strategy)
        if not thread_ids:
            return
        with self._transaction() as cur:
            kept = []
            if strategy == "keep_latest":
                refuse_delta_threads([r["thread_id"] for r in cur.execute(SELECT_DELTA_THREADS_SQL, (thread_ids,))])
                for thread_id in thread_ids:
                    heads = self._unpacked(cur.execute(SELECT_HEADS_SQL, (thread_id,)).fetchall())
                    blobs = self._blob_map(thread_id, self._blobs(cur, self._wanted(heads)))
                    for row in heads:
                        kept += self._kept_rows(self._tuple(row, row["pending"], blobs, seed=False), row, blobs)
            if strategy == "delete":
                cur.execute(TOMBSTONE_SQL, (thread_ids,))
            for sql in DELETE_THREADS_SQL:
                cur.execute(sql, (thread_ids,))
            for sql, params in kept:
                cur.execute(sql, params)
        self.chains.forget(thread_ids)

    def get_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]):
        # The official fast path reads the official row format; ours walks get_tuple, which reads ours.
        return BaseCheckpointSaver.get_delta_channel_history(self, config=config, channels=channels)


class AsyncPostgres(SyncWrappers, _Rows, AsyncPostgresSaver):
    """The async twin of Postgres."""

    async def setup(self) -> None:
        await super().setup()
        async with aget_connection(self.conn) as conn:
            await amigrate_postgres(conn)

    @cached_property
    def response_cache(self) -> AsyncPostgresCache:
        return AsyncPostgresCache(self.conn, self)

    @cached_property
    def _lanes(self) -> dict[str, _Lane]:
        return _lanes(self.conn, self.lock, asyncio.Lock)

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False, lane: str = "main") -> AsyncIterator[psycopg.AsyncCursor]:
        """As Postgres._cursor: connections of the pool kept for the saver's own statements, one per lane."""
        if not isinstance(self.conn, AsyncConnectionPool):
            async with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        held = self._lanes[lane]
        async with held.lock:
            if held.conn is not None and not _idle_and_open(held.conn):
                await self.conn.putconn(held.conn)
                held.conn = None
            if held.conn is None:
                held.conn = await self.conn.getconn()
            conn = held.conn
            async with (conn.transaction() if pipeline else _anull()), \
                    conn.cursor(binary=True, row_factory=dict_row) as cur:
                yield cur

    async def aclose(self) -> None:
        if not isinstance(self.conn, AsyncConnectionPool):
            return
        for held in set(self._lanes.values()):
            async with held.lock:
                if held.conn is not None:
                    await self.conn.putconn(held.conn)
                    held.conn = None

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncCursor]:
        async with self._cursor() as cur, cur.connection.transaction():
            yield cur

    async def _blobs(self, cur, wanted: dict) -> list:
        if not wanted["channels"]:
            return []
        return await (await cur.execute(SELECT_BLOBS_SQL, wanted)).fetchall()

    async def _load(self, cur, rows, *, seed: bool) -> list[CheckpointTuple]:
        if not rows:
            return []
        rows = self._unpacked(rows)
        wanted = self._wanted(rows)
        return self._tuples(rows, await self._blobs(cur, wanted), seed=seed)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id, ns = str(configurable["thread_id"]), configurable.get("checkpoint_ns", "")
        async with self._cursor() as cur:
            if checkpoint_id := get_checkpoint_id(config):
                await cur.execute(SELECT_ONE_SQL, (thread_id, ns, checkpoint_id))
            else:
                await cur.execute(SELECT_LATEST_SQL, (thread_id, ns))
            tuples = await self._load(cur, await cur.fetchall(), seed=True)
        if not tuples and not checkpoint_id:  # nothing stored in this thread and namespace
            self.chains.start(thread_id, ns)
        return tuples[0] if tuples else None

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        query, params, sealed = self._list_query(config, filter, before, limit)
        async with self._cursor() as cur:
            rows = await (await cur.execute(query, params)).fetchall()
            by_thread: dict[str, list] = {}
            for row in rows:
                by_thread.setdefault(row["thread_id"], []).append(row)
            loaded = {}
            for thread_rows in by_thread.values():
                for row, tup in zip(thread_rows, await self._load(cur, thread_rows, seed=False)):
                    loaded[(row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"])] = tup
        for tup in self._listed(rows, loaded, sealed, limit):
            yield tup

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        sql, params, encoded = self._put_params(config, checkpoint, metadata, new_versions)
        async with self._cursor() as cur:
            try:
                await cur.execute(sql, params)
            except psycopg.errors.UniqueViolation as exc:
                raise self._refused(exc, config) from None
            if not cur.rowcount:
                raise thread_deleted(str(config["configurable"]["thread_id"]))
            self.chains.remember(str(config["configurable"]["thread_id"]), config["configurable"]["checkpoint_ns"],
                                 encoded)
        return next_config(config, checkpoint)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        if not writes:
            return
        sql, params = self._writes_params(config, writes, task_id, task_path)
        async with self._cursor(lane="writes") as cur:
            if not (await cur.execute(sql, params)).rowcount and \
                    await (await cur.execute(_DELETED, params[-2:])).fetchone():
                raise thread_deleted(params[0])

    async def arevive(self, thread_id: str) -> None:
        async with self._cursor() as cur:
            await cur.execute(REVIVE_SQL, (str(thread_id),))

    async def adelete_thread(self, thread_id: str) -> None:
        async with self._transaction() as cur:
            await cur.execute(TOMBSTONE_SQL, ([str(thread_id)],))
            for sql in DELETE_THREADS_SQL:
                await cur.execute(sql, ([str(thread_id)],))
        self.chains.forget([thread_id])

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        if run_ids:
            async with self._cursor() as cur:
                await cur.execute(DELETE_RUNS_SQL, ([str(r) for r in run_ids],))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str, *, up_to: str | None = None,
                           metadata: dict | None = None) -> None:
        params = {"source": str(source_thread_id), "target": str(target_thread_id), "up_to": up_to}
        metadata = copy_metadata(self.serde, metadata)
        async with self._transaction() as cur:
            if await (await cur.execute(EXISTS_THREAD_SQL, (params["target"],))).fetchone():
                raise target_exists(params["target"])
            await cur.execute(REVIVE_SQL, (params["target"],))
            if up_to is None:
                statements = COPY_ALL_SQL
            else:
                ids = [r["checkpoint_id"] for r in await (await cur.execute(SELECT_LINEAGE_SQL, params)).fetchall()]
                if not ids:
                    raise no_checkpoint(params["source"], up_to)
                params.update(root=ids, sub=[i for i in ids if i != up_to])
                statements = COPY_LINEAGE_SQL
            for kind, sql in zip(COPY_KINDS, statements):
                if encrypted(self.serde):
                    if rows := await (await cur.execute(_as_select(sql), params)).fetchall():
                        await cur.executemany(COPY_INSERT[kind], [self._moved(kind, r, params["target"]) for r in rows])
                else:
                    await cur.execute(sql, params)
            if metadata:
                await cur.execute(PATCH_METADATA_SQL, (_jsonb(metadata), params["target"]))
        self.chains.forget([params["target"]])

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        thread_ids = prune_args(thread_ids, strategy)
        if not thread_ids:
            return
        async with self._transaction() as cur:
            kept = []
            if strategy == "keep_latest":
                await cur.execute(SELECT_DELTA_THREADS_SQL, (thread_ids,))
                refuse_delta_threads([r["thread_id"] for r in await cur.fetchall()])
                for thread_id in thread_ids:
                    heads = self._unpacked(await (await cur.execute(SELECT_HEADS_SQL, (thread_id,))).fetchall())
                    wanted = self._wanted(heads)
                    blobs = self._blob_map(thread_id, await self._blobs(cur, wanted))
                    for row in heads:
                        kept += self._kept_rows(self._tuple(row, row["pending"], blobs, seed=False), row, blobs)
            if strategy == "delete":
                await cur.execute(TOMBSTONE_SQL, (thread_ids,))
            for sql in DELETE_THREADS_SQL:
                await cur.execute(sql, (thread_ids,))
            for sql, params in kept:
                await cur.execute(sql, params)
        self.chains.forget(thread_ids)

    async def aget_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]):
        return await BaseCheckpointSaver.aget_delta_channel_history(self, config=config, channels=channels)


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


def _open(conn) -> bool:
    """An idle connection has nothing to read: a readable socket means the server closed it (a restart, an
    idle timeout, pg_terminate_backend) or sent a fatal error. No round trip, unlike the pool's
    check_connection, which would cost one per call."""
    return not conn.closed and not conn.broken and not select.select([conn.fileno()], [], [], 0)[0]


class _Lane:
    """A connection of the pool a saver holds for one kind of statement, and the lock that lets one caller at
    a time use it."""

    def __init__(self, lock):
        self.lock = lock
        self.conn = None


def _lanes(pool, main_lock, new_lock) -> dict[str, _Lane]:
    """The saver's lanes: "main" for everything but put_writes, which gets a connection of its own when the
    pool has room for it beside the one the reply cache and thread leases need (pg_pool_size >= 3).
    LangGraph submits a task's writes and then the step's checkpoint to its background executor and waits
    only for the checkpoint, so on two connections the round trips overlap instead of queueing behind one
    lock (bench/savers.py). Nothing orders them in the database: a write names its checkpoint, the checkpoint
    row does not depend on the writes, and both check the tombstones themselves (a put_writes that commits
    while delete_thread runs on the other lane can leave orphan writes, as one from another process can:
    README, Production notes)."""
    main = _Lane(main_lock)
    return {"main": main, "writes": _Lane(new_lock()) if getattr(pool, "max_size", 1) >= 3 else main}


def _idle_and_open(conn) -> bool:
    """Whether the saver may keep using its connection: open, and not past the pool's max_lifetime. The
    pool only retires a connection when it comes back, and the saver keeps its own one for as long as this
    says yes (then gives it back, and the pool replaces it). `_expire_at` is psycopg_pool's own mark."""
    return _open(conn) and getattr(conn, "_expire_at", math.inf) > time.monotonic()


def _check_alive(conn: psycopg.Connection) -> None:
    """The pool's check before it lends a connection; a dead one is closed, so the pool replaces it."""
    if not _open(conn):
        conn.close()
        raise psycopg.OperationalError("the server closed the connection")


async def _acheck_alive(conn: psycopg.AsyncConnection) -> None:
    if not _open(conn):
        await conn.close()
        raise psycopg.OperationalError("the server closed the connection")


def _fetch_all(conn):
    def execute(sql: str, params) -> list:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []
    return execute


def _afetch_all(conn):
    async def execute(sql: str, params) -> list:
        cur = await conn.execute(sql, params)
        return await cur.fetchall() if cur.description else []
    return execute


def _connect_kwargs(url: str, options: SaverOptions) -> dict:
    """What every connection of a saver is opened with besides its URL, the setup's own one included."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    return {"connect_timeout": CONNECT_TIMEOUT_S, "prepare_threshold": options.prepare_threshold,
            **{key: value for key, value in KEEPALIVES.items() if key not in given}}


def _pool_kwargs(url: str, options: SaverOptions) -> dict:
    return {
        "conninfo": url,
        "min_size": 1,
        "max_size": options.pool_size,
        "kwargs": {**CONNECTION_KWARGS, **_connect_kwargs(url, options)},
        "timeout": CONNECT_TIMEOUT_S * 2,
        "max_idle": POOL_MAX_IDLE_S,
        "max_lifetime": POOL_MAX_LIFETIME_S,
        "open": False,
    }


def _setup_error(url: str, exc: psycopg.Error) -> StorageError:
    hint = ""
    if isinstance(exc, (psycopg.errors.DuplicatePreparedStatement, psycopg.errors.InvalidSqlStatementName)):
        hint = ("; behind a transaction-mode pooler (pgbouncer) turn server-side prepared statements off: "
                "pg_prepare_threshold = \"none\" (AGENT_PG_PREPARE_THRESHOLD=none)")
    return StorageError(f"cannot set up the Postgres schema at {_where(url)}: {exc}{hint}")


@contextmanager
def open_postgres(url: str, options: SaverOptions | None = None) -> Iterator[Postgres]:
    from psycopg_pool import ConnectionPool

    from savers.locks import create_lease_table, locks_for

    options = options or SaverOptions()
    started = time.monotonic()
    try:
        # One plain connection first: its error says why (refused, auth, no such database).
        guard = psycopg.connect(url, autocommit=True, **_connect_kwargs(url, options))
    except psycopg.Error as exc:
        raise _storage_error(url, exc) from None
    pool = ConnectionPool(check=_check_alive, **_pool_kwargs(url, options))
    pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
    saver = Postgres(pool)
    try:
        try:
            with guard:
                # The official setup() is not safe when two processes start on a fresh database at once
                # (both insert the same checkpoint_migrations row): one at a time, under the setup lease.
                create_lease_table(guard)
                with locks_for(saver).lease(SETUP_LEASE, lambda: _setup_pause(url, started)):
                    saver.setup()
                    saver.serde = run_plan(serde_plan(options, f"Postgres at {_where(url)}", "%s"),
                                           _fetch_all(guard))
        except psycopg.Error as exc:
            raise _setup_error(url, exc) from exc
        yield saver
    finally:
        saver.close()
        pool.close()


@asynccontextmanager
async def open_async_postgres(url: str, options: SaverOptions | None = None) -> AsyncIterator[AsyncPostgres]:
    from psycopg_pool import AsyncConnectionPool

    from savers.locks import acreate_lease_table, locks_for

    options = options or SaverOptions()
    started = time.monotonic()
    try:
        guard = await psycopg.AsyncConnection.connect(url, autocommit=True, **_connect_kwargs(url, options))
    except psycopg.Error as exc:
        raise _storage_error(url, exc) from None
    pool = AsyncConnectionPool(check=_acheck_alive, **_pool_kwargs(url, options))
    await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
    saver = AsyncPostgres(pool)
    try:
        try:
            async with guard:
                await acreate_lease_table(guard)
                async with locks_for(saver).alease(SETUP_LEASE, lambda: _setup_pause(url, started)):
                    await saver.setup()
                    saver.serde = await arun_plan(serde_plan(options, f"Postgres at {_where(url)}", "%s"),
                                                  _afetch_all(guard))
        except psycopg.Error as exc:
            raise _setup_error(url, exc) from exc
        yield saver
    finally:
        await saver.aclose()
        await pool.close()
