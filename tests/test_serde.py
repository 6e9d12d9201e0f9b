"""Stored values compressed, encrypted at rest, and loaded safely (savers.serde), on real runs of the agent's
graph in real SQLite files: what goes in comes back, a long thread takes fewer bytes, the file holds no
plaintext, a wrong or missing key is a clear error, and a crafted value rebuilds nothing."""

from __future__ import annotations

import asyncio
import gzip
import pickle
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import ormsgpack
import pytest
import zstandard
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.event_hooks import register_serde_event_listener
from langgraph.types import Interrupt

from conftest import craft_write, rewrite_carried

from agent.offline import OfflineChatModel
from graphs.ask import Price, Retry
from graphs.cot import build_graph, fresh_state
from savers.errors import StorageError
from savers.serde import BlockedType, EncryptionError, Serializer, make_serde, serde_from_env
from savers.sqlite import PRAGMAS, AsyncSqlite, Sqlite

KEY = "correct horse battery staple"
OTHER_KEY = "incorrect horse battery staple"
QUESTION = "What is 17*23+4?"
LONG_QUESTION = "What is " + "+".join(str(n) for n in range(101, 161)) + "?"  # a plan of 59 steps
SERDES = {
    "plain": lambda: make_serde(),
    "zstd": lambda: make_serde(compression="zstd"),
    "gzip": lambda: make_serde(compression="gzip"),
    "encrypted": lambda: make_serde(encryption_key=KEY),
    "zstd+encrypted": lambda: make_serde(compression="zstd", encryption_key=KEY),
}


@contextmanager
def opened(path: Path, serde, model=None, **graph_options):
    """The agent's graph on our SQLite saver, constructed with `serde`, as the savers will be."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        for pragma in PRAGMAS:
            conn.execute(pragma)
        saver = Sqlite(conn, serde=serde)
        saver.setup()
        yield saver, build_graph(model or OfflineChatModel(), **graph_options).compile(checkpointer=saver)
    finally:
        conn.close()


def config(thread: str, **configurable) -> dict:
    return {"configurable": {"thread_id": thread, **configurable}}


def reason(path: Path, serde, question: str = QUESTION, thread: str = "t") -> dict:
    with opened(path, serde) as (_, graph):
        return graph.invoke(fresh_state(question), config(thread), durability="sync")


def history(graph, thread: str = "t") -> list[tuple]:
    """What a user sees of every checkpoint, newest first, without ids and times."""
    return [(s.metadata["step"], s.metadata["source"], s.values, s.next)
            for s in graph.get_state_history(config(thread))]


def stored_types(path: Path, thread: str = "t") -> set[str]:
    """The type tags of a thread's rows, whatever the saver's row layout."""
    with sqlite3.connect(path) as conn:
        return {row[0] for table in ("checkpoints", "writes", "agent_blobs")
                for row in conn.execute(f"SELECT type FROM {table} WHERE thread_id = ?", (thread,))}


def value_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return sum(conn.execute(sql).fetchone()[0] or 0 for sql in (
            "SELECT sum(length(checkpoint)) FROM checkpoints", "SELECT sum(length(value)) FROM writes",
            "SELECT sum(length(parent_writes)) FROM checkpoints",
            "SELECT sum(length(blob)) FROM agent_blobs"))


def raw_bytes(path: Path) -> bytes:
    """The database as it lies on disk, its write-ahead log included."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


@pytest.fixture(scope="module")
def expected() -> list[tuple]:
    """The history of QUESTION as LangGraph's own in-memory saver and serializer keep it."""
    graph = build_graph(OfflineChatModel()).compile(checkpointer=InMemorySaver())
    graph.invoke(fresh_state(QUESTION), config("t"))
    return history(graph)


# -- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERDES)
def test_a_real_run_reads_back_exactly_under_every_option(name, tmp_path, expected):
    path = tmp_path / "agent.db"
    assert reason(path, SERDES[name]())["answer"] == "395"
    with opened(path, SERDES[name]()) as (saver, graph):  # a new process would build a new serializer
        assert history(graph) == expected
        tuples = list(saver.list(config("t")))
    serde = SERDES[name]()
    for tup in tuples:
        for value in (tup.checkpoint, tup.metadata, *(v for _, _, v in tup.pending_writes)):
            assert serde.loads_typed(serde.dumps_typed(value)) == value
    if "encrypted" in name:
        assert all(t.endswith("+aesgcm") for t in stored_types(path))


def test_the_async_saver_with_every_value_compressed_and_encrypted_passes_the_official_conformance_suite(tmp_path):
    import aiosqlite
    from langgraph.checkpoint.conformance import checkpointer_test, validate

    serde = Serializer(compression="zstd", cipher=make_serde(encryption_key=KEY).cipher, compress_min_bytes=0)
    count = iter(range(1000))

    @checkpointer_test(name="sqlite+zstd+aesgcm")
    async def ours():
        async with aiosqlite.connect(tmp_path / f"c{next(count)}.db", isolation_level=None) as conn:
            saver = AsyncSqlite(conn, serde=serde)
            await saver.setup()
            yield saver

    report = asyncio.run(validate(ours))
    assert [f for result in report.results.values() for f in result.failures] == []
    assert report.conformance_level() == "FULL"


def test_rows_written_before_compression_was_turned_on_still_load(tmp_path, expected):
    path = tmp_path / "agent.db"
    reason(path, make_serde(), thread="old")
    reason(path, make_serde(compression="gzip"), thread="gzip")
    reason(path, make_serde(compression="zstd"), thread="new")
    assert not any("+" in t for t in stored_types(path, "old"))
    assert any(t.endswith("+gzip") for t in stored_types(path, "gzip"))
    assert any(t.endswith("+zstd") for t in stored_types(path, "new"))
    for reader in (make_serde(), make_serde(compression="zstd"), make_serde(compression="gzip")):
        with opened(path, reader) as (_, graph):
            assert history(graph, "old") == history(graph, "gzip") == history(graph, "new") == expected


def test_compression_shrinks_a_long_thread(tmp_path):
    stored = {}
    for name in ("plain", "zstd", "gzip"):
        path = tmp_path / f"{name}.db"
        assert reason(path, SERDES[name](), LONG_QUESTION)["answer"] == str(sum(range(101, 161)))
        stored[name] = value_bytes(path)
    assert stored["zstd"] < 0.8 * stored["plain"]
    assert stored["gzip"] < 0.8 * stored["plain"]


@pytest.mark.parametrize("codec, compress", [
    ("zstd", lambda data: zstandard.ZstdCompressor().compress(data)),
    ("gzip", gzip.compress),
])
def test_a_value_that_would_decompress_past_the_limit_is_refused(codec, compress, monkeypatch):
    import savers.serde

    bomb = compress(ormsgpack.packb("x" * 100_000))  # a few hundred bytes in the database
    monkeypatch.setattr(savers.serde, "MAX_VALUE_BYTES", 10_000)
    with pytest.raises(StorageError, match=f"a stored {codec} value would decompress to more than"):
        make_serde().loads_typed((f"msgpack+{codec}", bomb))


# -- encryption ----------------------------------------------------------------------------------------------


def test_an_encrypted_database_file_holds_no_plaintext_of_the_reasoning(tmp_path):
    plain, encrypted = tmp_path / "plain" / "agent.db", tmp_path / "encrypted" / "agent.db"
    plain.parent.mkdir(), encrypted.parent.mkdir()
    reason(plain, make_serde())
    reason(encrypted, make_serde(compression="zstd", encryption_key=KEY))
    secrets = [QUESTION.encode(), b"Multiply 17 by 23", b"recomputed independently"]
    assert all(s in raw_bytes(plain) for s in secrets)  # what the test looks for is there without encryption
    assert not any(s in raw_bytes(encrypted) for s in secrets)


@pytest.fixture
def encrypted_db(tmp_path) -> Path:
    path = tmp_path / "agent.db"
    reason(path, make_serde(encryption_key=KEY))
    return path


@pytest.mark.parametrize("serde, message", [
    (lambda: make_serde(encryption_key=OTHER_KEY), "AGENT_ENCRYPTION_KEY is not the key this database was written"),
    (lambda: make_serde(encryption_key=KEY, salt=b"another database"), "not the key this database was written with"),
    (lambda: make_serde(), "no key is set: set AGENT_ENCRYPTION_KEY"),
    (lambda: make_serde(compression="zstd"), "no key is set: set AGENT_ENCRYPTION_KEY"),
], ids=["wrong key", "wrong salt", "no key", "no key, compression on"])
def test_reading_without_the_right_key_is_a_clear_error(encrypted_db, serde, message):
    with opened(encrypted_db, serde()) as (_, graph):
        with pytest.raises(EncryptionError, match=message):
            graph.get_state(config("t"))
        with pytest.raises(EncryptionError, match=message):
            graph.invoke(fresh_state(QUESTION), config("t"))


def test_plaintext_rows_are_refused_when_encryption_is_on(tmp_path):
    path = tmp_path / "agent.db"
    reason(path, make_serde(compression="zstd"))
    with opened(path, make_serde(encryption_key=KEY)) as (_, graph):
        with pytest.raises(EncryptionError, match="not encrypted, but AGENT_ENCRYPTION_KEY is set"):
            graph.get_state(config("t"))


def _flip_a_byte(conn) -> None:
    checkpoint_id, data = conn.execute("SELECT checkpoint_id, checkpoint FROM checkpoints "
                                       "ORDER BY checkpoint_id DESC LIMIT 1").fetchone()
    conn.execute("UPDATE checkpoints SET checkpoint = ? WHERE checkpoint_id = ?",
                 (data[:40] + bytes([data[40] ^ 1]) + data[41:], checkpoint_id))


def _relabel(conn) -> None:
    # The type tag is bound to the value: an encrypted value of one type cannot pass for another.
    conn.execute("UPDATE writes SET type = CASE type WHEN 'msgpack+aesgcm' THEN 'json+aesgcm' "
                 "ELSE 'msgpack+aesgcm' END")
    rewrite_carried(conn, lambda e: [*e[:4], "json+aesgcm" if e[4] == "msgpack+aesgcm" else "msgpack+aesgcm", e[5]])


@pytest.mark.parametrize("alter", [_flip_a_byte, _relabel], ids=["a byte flipped", "type tag changed"])
def test_an_altered_encrypted_value_fails_its_integrity_check(encrypted_db, alter):
    with sqlite3.connect(encrypted_db) as conn:
        alter(conn)
    with opened(encrypted_db, make_serde(encryption_key=KEY)) as (saver, _):
        with pytest.raises(EncryptionError, match="integrity check"):
            list(saver.list(config("t")))


def test_a_short_or_empty_passphrase_is_refused_before_anything_is_written():
    with pytest.raises(EncryptionError, match=r"too short \(15 characters\): use a passphrase of at least 16"):
        make_serde(encryption_key="fifteen chars!!")
    with pytest.raises(EncryptionError, match=r"too short \(0 characters\)"):
        serde_from_env({"AGENT_ENCRYPTION_KEY": ""})


def test_the_environment_chooses_compression_and_encryption(tmp_path):
    serde = serde_from_env({"AGENT_COMPRESSION": "ZSTD", "AGENT_ENCRYPTION_KEY": KEY})
    assert serde.compression == "zstd" and serde.encrypted
    assert serde.dumps_typed({"plan": ["Add 1 and 2"] * 100})[0] == "msgpack+zstd+aesgcm"
    assert not serde_from_env({}).encrypted and serde_from_env({"AGENT_COMPRESSION": "none"}).compression is None
    with pytest.raises(StorageError, match="AGENT_COMPRESSION='lz4' is not a compression: use zstd, gzip or none"):
        serde_from_env({"AGENT_COMPRESSION": "lz4"})


# -- safe loading --------------------------------------------------------------------------------------------


def _ext(code: int, *fields) -> bytes:
    return ormsgpack.packb(ormsgpack.Ext(code, ormsgpack.packb(list(fields))))


class _RunsOnLoad:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def crafted_values(command: str) -> dict[str, tuple[str, bytes]]:
    """Stored values that, loaded by a trusting serializer, would run `command`."""
    return {
        "constructor": ("msgpack", _ext(0, "os", "system", command)),
        "positional constructor": ("msgpack", _ext(1, "os", "system", [command])),
        "keyword constructor": ("msgpack", _ext(2, "subprocess", "run", {"args": command, "shell": True})),
        "method": ("msgpack", _ext(3, "os", "system", command, "__call__")),
        "pydantic": ("msgpack", _ext(5, "os", "system", {"command": command}, "model_validate_json")),
        "nested in a dict": ("msgpack", ormsgpack.packb({"plan": ormsgpack.Ext(0, ormsgpack.packb(
            ["builtins", "eval", f"__import__('os').system({command!r})"]))})),
        "json constructor": ("json", b'{"lc": 2, "type": "constructor", "id": ["os", "system"], "args": ["%s"]}'
                             % command.encode()),
        "pickle": ("pickle", pickle.dumps(_RunsOnLoad(command))),
    }


@pytest.mark.parametrize("kind", list(crafted_values("")))
@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "compressed"])
def test_a_value_crafted_to_run_a_command_runs_nothing(kind, compressed, tmp_path):
    witness = tmp_path / "ran"
    type_, data = crafted_values(f"touch {witness}")[kind]
    serde = make_serde(compression="zstd")
    if compressed:  # as an attacker would write it: the tag says zstd, whether or not that saves bytes
        type_, data = f"{type_}+zstd", zstandard.ZstdCompressor().compress(data)
    # Refused with a clear error - BlockedType names the type; pickle is not a type we read at all - and the
    # command never ran (strict mode does not import or call what a value names).
    with pytest.raises((BlockedType, NotImplementedError, ValueError)):
        serde.loads_typed((type_, data))
    assert not witness.exists()


def test_a_crafted_row_in_the_database_runs_nothing_when_the_thread_is_read(tmp_path):
    path, witness = tmp_path / "agent.db", tmp_path / "ran"
    reason(path, make_serde())
    with sqlite3.connect(path) as conn:
        assert craft_write(conn, "plan", "msgpack", crafted_values(f"touch {witness}")["constructor"][1])
    with opened(path, make_serde()) as (saver, _):
        with pytest.raises(BlockedType, match=r"never loaded from storage \(os\.system\)"):
            list(saver.list(config("t")))
    assert not witness.exists()


def test_everything_the_graph_stores_loads_in_strict_mode(tmp_path):
    """Plain values, a budget pause (an Interrupt) and a failed step (its error): no type is blocked."""

    class Broken(OfflineChatModel):
        def _generate(self, *args, **kwargs):
            raise RuntimeError("the model is down")

    events = []
    unregister = register_serde_event_listener(events.append)
    try:
        path, serde = tmp_path / "agent.db", make_serde(compression="zstd")
        reason(path, serde, LONG_QUESTION)
        with opened(path, serde, price=Price(input=1.0, output=1.0)) as (_, graph):
            graph.invoke(fresh_state(QUESTION), config("paused", budget=0.0), durability="sync")
            paused = graph.get_state(config("paused"))
        with opened(path, serde, model=Broken(), retry=Retry(max_retries=0)) as (_, graph):
            with pytest.raises(RuntimeError, match="the model is down"):
                graph.invoke(fresh_state(QUESTION), config("failed"), durability="sync")
            failed = graph.get_state(config("failed"))
            for thread in ("t", "paused", "failed"):
                history(graph, thread)
    finally:
        unregister()
    assert events == []
    assert isinstance(paused.interrupts[0], Interrupt) and paused.interrupts[0].value["reason"] == "budget_exceeded"
    assert "the model is down" in str(failed.tasks[0].error)
