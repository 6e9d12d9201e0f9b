"""The two statements on every step's path - `put`'s and `put_writes`' INSERT - run through libpq directly
(psycopg's own `pq` layer) instead of a psycopg cursor.

A cursor's `execute` costs ~70 µs of client CPU per statement on the bench VM (SQL conversion, a Transformer
dumping each parameter, the generator that waits for the result), and sync steps are CPU-bound: ~30 µs of
that is psycopg's machinery around one round trip. Here the parameters - only text, bytes, whole numbers,
None and Jsonb, which is all the savers' hot statements carry - are encoded in a few lines, and the
statement runs as one `PQexecPrepared` (or `PQexecParams` when server-side prepared statements are off:
pgbouncer in transaction mode), which lets go of the GIL while it waits. bench/savers.py in-graph A/B,
20 interleaved rounds of 2,000 threads' steps: sync Postgres 1.61x InMemorySaver against 1.72x through the
cursor (bench/RESULTS.md, "Postgres: one statement per call"). Anything else - another parameter type, text
holding NUL, which libpq cannot send as text - goes through psycopg's cursor as before, and so raises
psycopg's own error.

The caller holds the connection alone (a saver lane's lock), in autocommit and idle; each statement is its
own transaction, as through the cursor. Errors are psycopg's classes (from the result's SQLSTATE, with its
`diag`), a lost connection an `OperationalError`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg.types.json import Jsonb

# Parameter types by Python type: text, bytea, int8, jsonb; None is sent as NULL of the type the server infers.
_TEXT, _BYTEA, _INT8, _JSONB = 25, 17, 20, 3802
_OIDS = {str: _TEXT, bytes: _BYTEA, int: _INT8, type(None): 0, Jsonb: _JSONB}
# Prepared statements kept per connection; past this, statements run unnamed (PQexecParams).
MAX_PREPARED = 256
_COMMAND_OK, _TUPLES_OK = pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK
_UNDEFINED_STATEMENT = b"26000"  # the server lost our prepared statement (a DISCARD ALL on the session)


class _Session:
    """What one connection has prepared, and how it encodes text."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.encoding = conn.info.encoding
        self.prepare = conn.prepare_threshold is not None
        self.names: dict[tuple[str, tuple[int, ...]], bytes] = {}
        self.made = 0  # statements prepared on it so far: each gets a name never used on it before


_SESSIONS: weakref.WeakKeyDictionary[psycopg.Connection, _Session] = weakref.WeakKeyDictionary()
_DOLLARS: dict[str, bytes] = {}


def _dollars(sql: str) -> bytes:
    """psycopg's %s placeholders as libpq's $1, $2, ... (the savers' hot SQL has no other %)."""
    query = _DOLLARS.get(sql)
    if query is None:
        parts = sql.split("%s")
        if any("%" in part for part in parts):
            raise ValueError(f"only %s placeholders are supported here: {sql}")
        query = _DOLLARS[sql] = "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)).encode() \
            + parts[-1].encode()
    return query


def execute(conn: psycopg.Connection, sql: str, params: Sequence[Any]) -> int:
    """Runs one statement of put or put_writes on `conn`; returns its row count (rows stored, or found)."""
    session = _SESSIONS.get(conn)
    if session is None:
        session = _SESSIONS[conn] = _Session(conn)
    types: list[int] = []
    values: list[bytes | None] = []
    formats: list[int] = []
    for p in params:
        if (oid := _OIDS.get(type(p))) is None:
            return _through_cursor(conn, sql, params)
        types.append(oid)
        if type(p) is str:
            if "\x00" in p:
                return _through_cursor(conn, sql, params)
            values.append(p.encode(session.encoding))
            formats.append(0)
        elif type(p) is bytes:
            values.append(p)
            formats.append(1)
        elif p is None:
            values.append(None)
            formats.append(0)
        elif type(p) is int:
            values.append(b"%d" % p)
            formats.append(0)
        elif p.dumps is not None:  # Jsonb as the savers make it (their own dumps)
            data = p.dumps(p.obj)
            values.append(data.encode(session.encoding) if isinstance(data, str) else bytes(data))
            formats.append(0)
        else:
            return _through_cursor(conn, sql, params)
    result = _run(conn, session, sql, tuple(types), values, formats)
    return result.command_tuples or 0


def _run(conn, session: _Session, sql: str, types: tuple[int, ...], values, formats, *,
         again: bool = True) -> pq.abc.PGresult:
    pgconn = conn.pgconn
    key = (sql, types)
    name = session.names.get(key)
    if name is None and session.prepare and len(session.names) < MAX_PREPARED:
        name = f"agent_hot_{session.made}".encode()
        session.made += 1
        _checked(conn, session, pgconn.prepare(name, _dollars(sql), types))
        session.names[key] = name
    if name is None:  # prepared statements off, or this connection holds its most
        return _checked(conn, session, pgconn.exec_params(_dollars(sql), values, types, formats, 0))
    result = pgconn.exec_prepared(name, values, formats, 0)
    if again and result.status != _COMMAND_OK and \
            result.error_field(pq.DiagnosticField.SQLSTATE) == _UNDEFINED_STATEMENT:
        # Prepared statements do not survive DISCARD ALL (a pooler resetting the session): prepare again.
        session.names.clear()
        return _run(conn, session, sql, types, values, formats, again=False)
    return _checked(conn, session, result)


def _checked(conn, session: _Session, result) -> pq.abc.PGresult:
    if result.status in (_COMMAND_OK, _TUPLES_OK):
        return result
    if conn.pgconn.status == pq.ConnStatus.BAD:
        raise psycopg.OperationalError(result.get_error_message(session.encoding).strip()
                                       or "the connection to the server was lost")
    raise errors.error_from_result(result, encoding=session.encoding)


def _through_cursor(conn: psycopg.Connection, sql: str, params: Sequence[Any]) -> int:
    with conn.cursor(binary=True) as cur:
        return cur.execute(sql, params).rowcount
