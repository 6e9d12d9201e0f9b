"""Postgres as deployed: behind pgbouncer in transaction mode (a real one, started by the suite), through
server-side disconnects between runs, and with two processes setting up a fresh database at once."""

import asyncio
import json
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass

import psycopg
import pytest

from agent import Agent, AsyncAgent, StorageError, ThreadBusy
from pgbouncer import bouncer  # noqa: F401 - the session fixture

QUESTION = "What is 2*3+4*5-6?"  # four steps on the HTTP test model -> 20
MODEL = "openai:gpt-4o-mini"


@dataclass
class Database:
    name: str
    url: str  # what the agent is given: direct, or through pgbouncer
    direct: str  # the server itself, for looking behind the agent's back


def _database(pg, request, tmp_path) -> tuple[str, str]:
    from conftest import fresh_db_url

    url = fresh_db_url("postgres", request, tmp_path)
    return urllib.parse.urlsplit(url).path.lstrip("/"), url


@pytest.fixture
def pooled(pg, bouncer, request, tmp_path) -> Database:  # noqa: F811
    """A fresh database, reached through pgbouncer in transaction mode."""
    name, direct = _database(pg, request, tmp_path)
    return Database(name, bouncer.url(name), direct)


@pytest.fixture(params=["direct", "pgbouncer"])
def deployed(request, pg, tmp_path) -> Database:
    """A fresh database, reached directly and through pgbouncer."""
    name, direct = _database(pg, request, tmp_path)
    if request.param == "direct":
        return Database(name, direct, direct)
    return Database(name, request.getfixturevalue("bouncer").url(name), direct)


def session_locks(db: Database) -> list[tuple]:
    """Advisory locks held on the server in this database (by any session but the one asking)."""
    with psycopg.connect(db.direct) as conn:
        return conn.execute("SELECT objid, pid FROM pg_locks WHERE locktype = 'advisory' AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()


def leases(db: Database) -> list[str]:
    with psycopg.connect(db.direct) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM agent_leases")]


def terminate_backends(db: Database) -> int:
    """Cut off every other session of the database, as an idle timeout or a failover would, and wait until
    they are gone."""
    with psycopg.connect(db.direct, autocommit=True) as conn:
        others = ("FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        killed = len(conn.execute(f"SELECT pg_terminate_backend(pid) {others}").fetchall())
        deadline = time.monotonic() + 10
        while conn.execute(f"SELECT count(*) {others}").fetchone()[0]:
            assert time.monotonic() < deadline, "terminated sessions did not go away"
            time.sleep(0.02)
    return killed


# -- behind pgbouncer in transaction mode --------------------------------------------------------------------


def test_a_whole_session_through_pgbouncer_with_prepared_statements_off(pooled, llm, monkeypatch):
    monkeypatch.setenv("AGENT_PG_PREPARE_THRESHOLD", "none")
    llm.fail(503)  # the first model call fails: the run stops early, and is resumed
    with Agent(db=pooled.url, model=MODEL, max_retries=0) as agent:
        assert agent.reason(QUESTION, thread="t1").status == "failed"
        assert agent.resume("t1").answer == "20"
        rows = agent.history("t1")
        assert [r.node for r in rows][-1] == "validate" and len(rows) == 8
        after_step_1 = [r for r in rows if r.node == "execute"][0]
        forked = agent.fork("t1", after_step_1.checkpoint_id, {"plan.2": "Multiply 5 by 4"})
        assert forked.answer == "20" and forked.steps[1].description == "Multiply 5 by 4"
        assert agent.reason(QUESTION, thread="t1").answer == "20"  # each run took the thread and gave it back
    with Agent(db=pooled.url) as reader:  # the record, as another process reads it
        assert reader.result("t1").answer == "20" and len(reader.history("t1")) > len(rows)
    # Nothing is left on the server connections pgbouncer keeps: no session lock, no lease.
    assert session_locks(pooled) == [] and leases(pooled) == []


def test_the_async_agent_through_pgbouncer(pooled, llm):
    async def main():
        async with AsyncAgent(db=pooled.url, model=MODEL, max_retries=0, pg_prepare_threshold="none") as agent:
            failed = await agent.reason(QUESTION, thread="t1")
            resumed = await agent.resume("t1")
            rows = await agent.history("t1")
            forked = await agent.fork("t1", rows[3].checkpoint_id, {"plan.2": "Multiply 5 by 4"})
            # Two runs of one thread at once: the second is refused, through the pooler too.
            both = await asyncio.gather(agent.reason("What is 6*7?", thread="t2"),
                                        agent.reason("What is 6*7?", thread="t2"), return_exceptions=True)
            return failed, resumed, rows, forked, both, await agent.history("t1")

    llm.fail(503)
    failed, resumed, rows, forked, both, after = asyncio.run(main())
    assert failed.status == "failed" and resumed.answer == "20" and len(rows) == 8
    assert forked.answer == "20" and len(after) > len(rows)
    assert sorted(type(o).__name__ for o in both) == ["RunResult", "ThreadBusy"]
    assert session_locks(pooled) == [] and leases(pooled) == []


def test_server_side_prepared_statements_through_pgbouncer_fail_at_open_with_advice(pooled):
    # The default (prepare at once) is what a direct connection wants; behind a transaction pooler the
    # statements a client prepared are on another server connection, or clash with another client's.
    with pytest.raises(StorageError, match=r'prepared statement "_pg3_\d+" (already exists|does not exist).*'
                                           r'pg_prepare_threshold = "none"'):
        with Agent(db=pooled.url, model="offline") as agent:
            agent.reason("What is 6*7?", thread="t1")


def test_the_cli_through_pgbouncer_reads_the_setting_from_agent_toml(cli, pooled):
    args = ("--db", pooled.url, "--model", "offline")
    (cli.cwd / "agent.toml").write_text('pg_prepare_threshold = "none"\npg_pool_size = 3\n')
    first = cli("reason", "What is 17*23+4?", "--thread", "t1", *args, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["answer"] == "395"
    history = cli("history", "--thread", "t1", "--db", pooled.url, "--json")
    assert history.returncode == 0 and len(json.loads(history.stdout)) > 3

    (cli.cwd / "agent.toml").write_text('pg_prepare_threshold = "sometimes"\n')
    bad = cli("threads", "--db", pooled.url)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == ("error: agent.toml: pg_prepare_threshold: 'sometimes' is not a prepare threshold: use a "
                                  "whole number >= 0, or none (no server-side prepared statements, for pgbouncer "
                                  "in transaction mode)")


# -- disconnects between runs --------------------------------------------------------------------------------


def test_every_connection_cut_off_between_two_runs_of_one_agent(deployed):
    with Agent(db=deployed.url, model="offline", pg_prepare_threshold="none") as agent:
        first = agent.reason("What is 17*23+4?", thread="a")
        before = [r.checkpoint_id for r in agent.history("a")]
        assert terminate_backends(deployed) >= 1
        second = agent.reason("What is 6*7?", thread="b")  # the pool reconnects; the run does not fail
        assert first.answer == "395" and second.status == "done" and second.answer == "42"
        assert [r.checkpoint_id for r in agent.history("a")] == before and agent.result("a").answer == "395"
        assert terminate_backends(deployed) >= 1
        assert {t.thread_id for t in agent.threads()} == {"a", "b"}  # reads reconnect too


def test_every_connection_cut_off_between_two_runs_of_one_async_agent(deployed):
    async def main():
        async with AsyncAgent(db=deployed.url, model="offline", pg_prepare_threshold="none") as agent:
            first = await agent.reason("What is 17*23+4?", thread="a")
            before = [r.checkpoint_id for r in await agent.history("a")]
            killed = terminate_backends(deployed)
            second = await agent.reason("What is 6*7?", thread="b")
            after = [r.checkpoint_id for r in await agent.history("a")]
            return first, second, killed, before, after, await agent.result("a")

    first, second, killed, before, after, stored = asyncio.run(main())
    assert killed >= 1 and first.answer == "395" and second.status == "done" and second.answer == "42"
    assert after == before and stored.answer == "395"


# -- schema setup --------------------------------------------------------------------------------------------

OPEN_WHEN_TOLD = """
import sys
import savers.locks, savers.postgres  # imported before the start signal, so setup starts at the same moment
from savers import open_saver
print("ready", flush=True)
sys.stdin.readline()
with open_saver(sys.argv[1]):
    print("open", flush=True)
"""


def test_two_processes_set_up_a_fresh_database_at_once(deployed, cli):
    from langgraph.checkpoint.postgres.base import MIGRATIONS

    from savers.migrations import POSTGRES

    env = cli.env({"AGENT_PG_PREPARE_THRESHOLD": "none"})
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_WHEN_TOLD, deployed.url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cli.cwd)
             for _ in range(2)]
    try:
        for proc in procs:  # both have imported everything: they start setting up within a millisecond
            assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [(p.returncode, out) for p, (out, _) in zip(procs, outcomes)] == [(0, "open\n")] * 2, outcomes
    with psycopg.connect(deployed.direct) as conn:
        assert conn.execute("SELECT count(*), max(v) FROM checkpoint_migrations").fetchone() == (
            len(MIGRATIONS), len(MIGRATIONS) - 1)
        assert conn.execute("SELECT count(*), max(v) FROM agent_migrations").fetchone() == (
            len(POSTGRES), len(POSTGRES) - 1)
        indexes = {row[0] for row in conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indisvalid")}
        # The official setup made its thread_id indexes (concurrently) and ours then dropped them: the primary
        # keys serve lookups by thread.
        assert {"checkpoints_pkey", "checkpoint_blobs_pkey", "checkpoint_writes_pkey", "agent_one_writer"} <= indexes
        assert not indexes & {"checkpoints_thread_id_idx", "checkpoint_blobs_thread_id_idx",
                              "checkpoint_writes_thread_id_idx"}
        assert conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0] == 0
    assert session_locks(deployed) == [] and leases(deployed) == []


def test_a_thread_held_by_a_live_run_elsewhere_is_busy_and_one_whose_process_died_is_not(deployed):
    """Leases on Postgres: a run's lease names its host and process; a lease of a process that died on this
    machine is taken over at once, one of another host waits for its expiry."""
    from savers.locks import HOST

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with Agent(db=deployed.url, model="offline", pg_prepare_threshold="none") as agent:
        agent.reason("What is 1+1?", thread="warm")  # the schema, and its lease table, exist
        with psycopg.connect(deployed.direct) as conn:
            conn.execute("INSERT INTO agent_leases VALUES ('thread:gone', 'x', %s, %s, now() + interval '1 hour'), "
                         "('thread:elsewhere', 'y', 'other-host', 1, now() + interval '1 hour'), "
                         "('thread:expired', 'z', 'other-host', 1, now() - interval '1 second')",
                         (HOST, int(dead.stdout)))
        # A run whose process died here is not running (its lease is taken over at once); another host's is.
        assert {t for t in ("gone", "elsewhere", "expired") if agent._running([t])} == {"elsewhere"}
        assert agent.reason("What is 1+2?", thread="gone").answer == "3"
        assert agent.reason("What is 1+3?", thread="expired").answer == "4"
        with pytest.raises(ThreadBusy):
            agent.reason("What is 1+4?", thread="elsewhere")
    assert leases(deployed) == ["thread:elsewhere"]
