"""Storage options end to end, through the Agent and the CLI, on both backends: encryption at rest (the raw
database holds no plaintext of the reasoning; a missing or wrong key is one clear error; a plaintext database
is never silently mixed with encrypted rows), compression, and strict loading of what is stored."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg
import pytest

from agent import Agent
from agent.errors import AgentError
from conftest import craft_write, fresh_db_url
from savers.errors import StorageError

KEY = "correct horse battery staple 42"
QUESTION = "What is 1234*5678+91?"
EDITED = "What is 4321*8765-19?"
# What must not be readable in the raw database: both questions (one only in the fork's edit record) and
# a number only the reasoning produced (1234*5678).
SECRETS = ("1234*5678", "4321*8765", "7006652")
LONG_QUESTION = "What is " + "+".join(str(n) for n in range(101, 141)) + "?"  # a plan of 39 steps


def backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgres"


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def raw_text(url: str) -> bytes:
    """Every byte the database holds: the SQLite files, or every row of every Postgres table as stored."""
    if backend(url) == "sqlite":
        path = sqlite_path(url)
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    chunks = []
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    chunks.append(value if isinstance(value, bytes) else
                                  json.dumps(value, default=str, ensure_ascii=False).encode())
    return b"\n".join(chunks)


def stored_bytes(url: str) -> int:
    """The bytes of stored checkpoints, values and writes (not the file's free pages)."""
    if backend(url) == "sqlite":
        with sqlite3.connect(sqlite_path(url)) as conn:
            return sum(conn.execute(sql).fetchone()[0] or 0 for sql in (
                "SELECT sum(length(checkpoint) + length(metadata)) FROM checkpoints",
                "SELECT sum(length(parent_writes)) FROM checkpoints",
                "SELECT sum(length(value)) FROM writes", "SELECT sum(length(blob)) FROM agent_blobs"))
    with psycopg.connect(url) as conn:
        return sum(conn.execute(sql).fetchone()[0] or 0 for sql in (
            "SELECT sum(octet_length(checkpoint::text) + octet_length(metadata::text)) FROM checkpoints",
            "SELECT sum(octet_length(blob)) FROM checkpoint_writes",
            "SELECT sum(octet_length(blob)) FROM checkpoint_blobs"))


def work(url: str) -> list[tuple]:
    """A run, a fork that edits the question, a replay answered from the reply cache, a branch; then what a
    user sees of every checkpoint (ids and times left out: they differ between databases)."""
    with Agent(db=url) as agent:
        agent.reason(QUESTION, thread="t1")
        rows = agent.history("t1")
        assert agent.fork("t1", rows[1].checkpoint_id, {"question": EDITED}).answer == str(4321 * 8765 - 19)
        # Every call after that checkpoint (two steps and the check) is answered from the (sealed) reply cache.
        assert agent.replay("t1", rows[2].checkpoint_id).usage.cached_calls == 3
        agent.branch("t1", rows[3].checkpoint_id, "b1")
        seen = []
        for thread in ("t1", "b1"):
            for row in agent.history(thread):
                view = agent.state(thread, row.checkpoint_id)
                seen.append((thread, row.step, row.node, row.source, tuple(row.next), row.summary, row.edit,
                             json.dumps(view.values, sort_keys=True), view.result.status))
        return seen


def test_an_encrypted_database_holds_no_plaintext_and_reads_back_exactly(db_url, request, tmp_path, monkeypatch):
    plain_url = fresh_db_url(backend(db_url), request, tmp_path / "plain") if backend(db_url) == "postgres" \
        else f"sqlite:///{tmp_path / 'plain.db'}"
    plain = work(plain_url)
    raw = raw_text(plain_url)
    assert all(secret.encode() in raw for secret in SECRETS)  # the check sees plaintext where there is some

    monkeypatch.setenv("AGENT_ENCRYPTION_KEY", KEY)
    assert work(db_url) == plain
    raw = raw_text(db_url)
    assert [secret for secret in SECRETS if secret.encode() in raw] == []


def test_without_the_key_or_with_another_the_database_is_refused_with_one_clear_line(db_url, cli, monkeypatch):
    monkeypatch.setenv("AGENT_ENCRYPTION_KEY", KEY)
    with Agent(db=db_url) as agent:
        agent.reason("What is 6*7?", thread="t1")
    monkeypatch.delenv("AGENT_ENCRYPTION_KEY")
    with pytest.raises(AgentError, match="is encrypted and AGENT_ENCRYPTION_KEY is not set"):
        Agent(db=db_url).__enter__()
    wrong = cli("history", "--thread", "t1", "--db", db_url, env={"AGENT_ENCRYPTION_KEY": KEY.upper()})
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().splitlines() == [
        "error: AGENT_ENCRYPTION_KEY is not the key this database was written with (a stored value was encrypted "
        "with another key): set it to that passphrase"]
    right = cli("show", "--thread", "t1", "--db", db_url, "--json", env={"AGENT_ENCRYPTION_KEY": KEY})
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["answer"] == "42"
    if backend(db_url) == "sqlite":  # the export of an encrypted database says it is plaintext; an import does not
        exported = cli("export", "-o", "t1.jsonl", "--db", db_url, env={"AGENT_ENCRYPTION_KEY": KEY})
        assert exported.returncode == 0 and "the export is not" in exported.stderr
        imported = cli("import", "t1.jsonl", "--db", "sqlite:///copy.db", env={"AGENT_ENCRYPTION_KEY": KEY})
        assert imported.returncode == 0 and "the export is not" not in imported.stderr


def test_a_plaintext_database_is_not_mixed_with_encrypted_rows_and_migrate_encrypts_it(db_url, tmp_path, monkeypatch):
    plain_url = f"sqlite:///{tmp_path / 'plain.db'}"
    with Agent(db=plain_url) as agent:
        agent.reason(QUESTION, thread="t1")
        before = [(r.step, r.node, r.summary) for r in agent.history("t1")]
    monkeypatch.setenv("AGENT_ENCRYPTION_KEY", KEY)
    with pytest.raises(AgentError, match="was written without encryption, but AGENT_ENCRYPTION_KEY is set"):
        Agent(db=plain_url).__enter__()
    with Agent(db=plain_url, plaintext_ok=True, create=False) as source, Agent(db=db_url) as target:
        source.migrate_to(target)
        assert [(r.step, r.node, r.summary) for r in target.history("t1")] == before
        assert target.resume("t1").answer == str(1234 * 5678 + 91)
    assert not any(secret.encode() in raw_text(db_url) for secret in SECRETS)


def test_compression_shrinks_a_long_thread(db_url, request, tmp_path, monkeypatch):
    other = fresh_db_url(backend(db_url), request, tmp_path / "zstd") if backend(db_url) == "postgres" \
        else f"sqlite:///{tmp_path / 'zstd.db'}"
    with Agent(db=db_url) as agent:
        plain_answer = agent.reason(LONG_QUESTION, thread="long").answer
    monkeypatch.setenv("AGENT_COMPRESSION", "zstd")
    with Agent(db=other) as agent:
        assert agent.reason(LONG_QUESTION, thread="long").answer == plain_answer == str(sum(range(101, 141)))
    plain, compressed = stored_bytes(db_url), stored_bytes(other)
    assert compressed < 0.8 * plain, (plain, compressed)
    # Values written compressed read back under any setting, compression off included.
    monkeypatch.delenv("AGENT_COMPRESSION")
    with Agent(db=other) as agent:
        assert agent.result("long").answer == plain_answer


def test_a_stored_row_crafted_to_run_a_command_is_refused_and_runs_nothing(db_url, tmp_path, cli):
    import ormsgpack

    witness = tmp_path / "ran"
    with Agent(db=db_url) as agent:
        agent.reason("What is 6*7?", thread="t1")
    crafted = ormsgpack.packb(ormsgpack.Ext(0, ormsgpack.packb(["os", "system", f"touch {witness}"])))
    if backend(db_url) == "sqlite":
        with sqlite3.connect(sqlite_path(db_url)) as conn:
            assert craft_write(conn, "plan", "msgpack", crafted)
    else:
        with psycopg.connect(db_url) as conn:
            assert craft_write(conn, "plan", "msgpack", crafted)
    with Agent(db=db_url) as agent:
        with pytest.raises(StorageError, match=r"never loaded from storage \(os\.system\)"):
            agent.history("t1")
    if backend(db_url) == "sqlite":
        shown = cli("history", "--thread", "t1", "--db", db_url)
        assert shown.returncode == 2 and "Traceback" not in shown.stderr
        assert shown.stderr.startswith("error: a stored value names types that are never loaded from storage")
    assert not witness.exists()


def test_langgraph_strict_msgpack_mode_keeps_our_serializer_and_warns_nothing(cli):
    """Under LANGGRAPH_STRICT_MSGPACK LangGraph asks the saver for a copy allowing the graph's schema types;
    a serializer it does not know gets "does not support msgpack allowlist" logged on every run."""
    for durability in ("sync", "async"):
        run = cli("reason", "What is 2+3*4?", "--thread", durability,
                  env={"LANGGRAPH_STRICT_MSGPACK": "true", "AGENT_DURABILITY": durability})
        assert run.returncode == 0 and "Answer: 14" in run.stdout
        assert "allowlist" not in run.stderr and run.stderr.strip() == "", run.stderr


def _swap(url: str, table_sql: dict) -> None:
    """Runs one backend's statement that moves an encrypted value into another row."""
    if backend(url) == "sqlite":
        with sqlite3.connect(sqlite_path(url)) as conn:
            if callable(table_sql["sqlite"]):
                table_sql["sqlite"](conn)
            else:
                conn.execute(table_sql["sqlite"])
    else:
        with psycopg.connect(url) as conn:
            conn.execute(table_sql["postgres"])


def _swap_carried_plan_write(conn) -> None:
    """On SQLite a step's writes are carried by the row of the checkpoint after it (parent_writes): the first
    carried entry of t1 with the plan (a task's packed writes, channel '*') put in place of t2's."""
    import ormsgpack

    found = {}
    for thread in ("t1", "t2"):
        for rowid, data in conn.execute("SELECT rowid, parent_writes FROM checkpoints WHERE thread_id = ? AND "
                                        "parent_writes IS NOT NULL ORDER BY checkpoint_id", (thread,)):
            entries = ormsgpack.unpackb(data)
            if hit := [i for i, entry in enumerate(entries) if entry[3] in ("plan", "*")]:
                found[thread] = rowid, entries, hit[0]
                break
    (_, source, i), (rowid, target, j) = found["t1"], found["t2"]
    target[j][5] = source[i][5]
    conn.execute("UPDATE checkpoints SET parent_writes = ? WHERE rowid = ?", (ormsgpack.packb(target), rowid))


@pytest.mark.parametrize("moved", ["write to another checkpoint", "checkpoint to another thread"])
def test_an_encrypted_value_copied_to_another_row_fails_to_decrypt(db_url, monkeypatch, moved):
    monkeypatch.setenv("AGENT_ENCRYPTION_KEY", KEY)
    with Agent(db=db_url) as agent:
        agent.reason(QUESTION, thread="t1")
        agent.reason(QUESTION, thread="t2")
        # A whole-thread copy is sealed again for its new thread, row by row, and reads back the same.
        agent._core.saver.copy_thread("t1", "t1-copy")
        assert [r.summary for r in agent.history("t1-copy")] == [r.summary for r in agent.history("t1")]
    if moved == "write to another checkpoint":
        # The plan write of t1 replaces the plan write of t2: same key, a valid ciphertext, the wrong row. A
        # task's writes are one packed row (channel '*'): the first task's row is the one with the plan.
        first = "SELECT {} FROM {} WHERE thread_id = '{}' AND channel IN ('plan', '*') ORDER BY checkpoint_id LIMIT 1"
        _swap(db_url, {
            "sqlite": _swap_carried_plan_write,
            "postgres": f"UPDATE checkpoint_writes SET blob = ({first.format('blob', 'checkpoint_writes', 't1')}) "
                        f"WHERE ctid = ({first.format('ctid', 'checkpoint_writes', 't2')})"})
    else:
        # t1's first checkpoint, as stored, put in place of t2's: only the thread differs.
        _swap(db_url, {
            "sqlite": "UPDATE checkpoints SET checkpoint = (SELECT checkpoint FROM checkpoints a WHERE a.thread_id = 't1' "
                      "ORDER BY checkpoint_id LIMIT 1), checkpoint_id = (SELECT checkpoint_id FROM checkpoints a "
                      "WHERE a.thread_id = 't1' ORDER BY checkpoint_id LIMIT 1) WHERE thread_id = 't2' AND "
                      "checkpoint_id = (SELECT MIN(checkpoint_id) FROM checkpoints WHERE thread_id = 't2')",
            "postgres": "UPDATE checkpoints SET checkpoint = a.checkpoint, checkpoint_id = a.checkpoint_id FROM "
                        "(SELECT checkpoint, checkpoint_id FROM checkpoints WHERE thread_id = 't1' "
                        "ORDER BY checkpoint_id LIMIT 1) a WHERE thread_id = 't2' AND checkpoints.checkpoint_id = "
                        "(SELECT MIN(checkpoint_id) FROM checkpoints WHERE thread_id = 't2')"})
    with Agent(db=db_url) as agent:
        assert agent.result("t1").answer == "7006743"  # the original rows still read
        with pytest.raises(StorageError, match="copied from another row"):
            agent.history("t2")


def test_with_encryption_a_copy_refuses_metadata_it_could_not_store_in_clear(db_url, monkeypatch):
    """copy_thread(metadata=...) writes the keys into the copied rows as stored: with encryption on, a key
    that is sealed (any but the few kept in clear, such as branch_of) was silently lost - the copy's sealed
    metadata, the source's, won on read. Now it is refused, and nothing is copied."""
    monkeypatch.setenv("AGENT_ENCRYPTION_KEY", KEY)
    with Agent(db=db_url) as agent:
        agent.reason(QUESTION, thread="t1")
        saver = agent._core.saver
        with pytest.raises(ValueError, match=r"cannot add metadata \['note'\] with encryption on"):
            saver.copy_thread("t1", "c1", metadata={"note": "mine", "branch_of": "t1"})
        assert agent.threads() and saver.get_tuple({"configurable": {"thread_id": "c1", "checkpoint_ns": ""}}) is None
        saver.copy_thread("t1", "c2", metadata={"branch_of": "t1"})
        assert {t.metadata["branch_of"] for t in saver.list({"configurable": {"thread_id": "c2"}})} == {"t1"}
