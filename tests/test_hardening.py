"""Known failure modes of LangGraph checkpoint storage, each shown on the stock saver and refused by ours, on
both backends: two writers silently forking one thread, and a late write bringing a deleted thread back."""

from __future__ import annotations

import sqlite3

import pytest
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.sqlite import SqliteSaver

import savers
from agent import Agent
from savers.catalog import list_threads
from savers.errors import ThreadDeleted, WriterConflict
from savers.sqlite import Sqlite

QUESTION = "What is 2*3+4*5-6?"


def config(thread: str, checkpoint_id: str | None = None) -> dict:
    configurable = {"thread_id": thread, "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def stale_put(saver, thread: str):
    """What a second writer that loaded a checkpoint before the first one went on from it would put: another
    "loop" child of a checkpoint that already has one. Returns the parent's id and the call."""
    child = next(t for t in saver.list(config(thread)) if t.metadata.get("source") == "loop" and t.parent_config)
    parent = child.parent_config["configurable"]["checkpoint_id"]
    twin = {**child.checkpoint, "id": str(uuid6())}
    metadata = {**child.metadata, "run_id": "another-writer"}
    return parent, lambda: saver.put(config(thread, parent), twin, metadata, {})


def children(saver, thread: str, parent: str) -> list[str]:
    return [t.checkpoint["id"] for t in saver.list(config(thread))
            if (t.parent_config or {}).get("configurable", {}).get("checkpoint_id") == parent]


def test_the_stock_saver_lets_two_writers_fork_a_thread_silently(tmp_path):
    with Agent(db=f"sqlite:///{tmp_path / 'agent.db'}") as agent:
        agent.reason(QUESTION, thread="t")
    stock = SqliteSaver(sqlite3.connect(tmp_path / "stock.db", check_same_thread=False))
    with savers.open_saver(f"sqlite:///{tmp_path / 'agent.db'}") as ours:
        for tup in reversed(list(ours.list(config("t")))):  # the same thread, written through the stock saver
            parent = (tup.parent_config or {}).get("configurable", {}).get("checkpoint_id")
            stock.put(config("t", parent), tup.checkpoint, tup.metadata, {})
    parent, put = stale_put(stock, "t")
    put()  # no error: the thread now has two "next" checkpoints after `parent`, and nobody was told
    assert len(children(stock, "t", parent)) == 2


def test_a_second_writer_from_the_same_checkpoint_gets_a_clear_conflict(db_url):
    with Agent(db=db_url) as agent:
        agent.reason(QUESTION, thread="t")
        before = [(r.checkpoint_id, r.parent_checkpoint_id) for r in agent.history("t")]
    with savers.open_saver(db_url) as saver:
        parent, put = stale_put(saver, "t")
        with pytest.raises(WriterConflict, match=f"another writer already went on from checkpoint {parent}"):
            put()
        assert len(children(saver, "t", parent)) == 1
    with Agent(db=db_url) as agent:
        assert [(r.checkpoint_id, r.parent_checkpoint_id) for r in agent.history("t")] == before
        # Forks on purpose still branch off any checkpoint: replay, fork, branch.
        rows = agent.history("t")
        assert agent.replay("t", rows[1].checkpoint_id).answer == "20"
        assert agent.fork("t", rows[1].checkpoint_id, {"question": "What is 6*7?"}).answer == "42"
        agent.branch("t", rows[2].checkpoint_id, "b")
        assert agent.resume("b").answer == "20"


def test_one_writer_holds_for_async_savers_for_a_run_start_and_not_for_a_rewrite(db_url):
    """The async savers refuse the second writer too; so is a second run started ("input") from a checkpoint
    another run already started from; a checkpoint put again (the same id) is no second writer."""
    import asyncio

    async def main():
        async with savers.open_async_saver(db_url) as saver:
            first = {**_empty_checkpoint(), "id": str(uuid6())}
            head = await saver.aput(config("a"), first, {"source": "input", "step": -1}, {})
            step = {**first, "id": str(uuid6())}
            await saver.aput(head, step, {"source": "loop", "step": 0}, {})
            await saver.aput(head, step, {"source": "loop", "step": 0, "again": True}, {})  # a rewrite: stored
            assert (await saver.aget_tuple(config("a"))).metadata.get("again") is True
            with pytest.raises(WriterConflict, match=f"went on from checkpoint {first['id']}"):
                await saver.aput(head, {**first, "id": str(uuid6())}, {"source": "loop", "step": 0}, {})
            started = await saver.aput(config("a", step["id"]), {**step, "id": str(uuid6())},
                                       {"source": "input", "step": 1}, {})
            with pytest.raises(WriterConflict):
                await saver.aput(config("a", step["id"]), {**step, "id": str(uuid6())},
                                 {"source": "input", "step": 1}, {})
            # Branching on purpose is not a second writer.
            await saver.aput(config("a", step["id"]), {**step, "id": str(uuid6())}, {"source": "fork", "step": 1}, {})
            assert [t.config async for t in saver.alist(config("a"), limit=1)][0] != started

    asyncio.run(main())


def test_a_database_made_with_the_one_writer_index_keeps_the_rule_without_it(tmp_path):
    """SQLite databases from before the rule moved into the put (savers/sqlite.py PUT_NEXT) lose the index at
    open (a migration) and still refuse the second writer."""
    from savers.migrations import SQLITE

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    SqliteSaver(conn).setup()
    conn.execute(SQLITE[0])
    for version, sql in enumerate(SQLITE[:SQLITE.index("DROP INDEX IF EXISTS agent_one_writer")]):  # the index is there
        conn.execute(sql)
        conn.execute("INSERT INTO agent_migrations (v) VALUES (?)", (version,))
    conn.commit()
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'agent_one_writer'").fetchone()
    conn.close()
    url = f"sqlite:///{path}"
    with Agent(db=url) as agent:
        agent.reason(QUESTION, thread="t")
    with savers.open_saver(url) as saver:
        assert not saver.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'agent_one_writer'").fetchone()
        parent, put = stale_put(saver, "t")
        with pytest.raises(WriterConflict):
            put()
        assert len(children(saver, "t", parent)) == 1


def test_the_stock_saver_lets_a_late_write_bring_a_deleted_thread_back(tmp_path):
    stock = SqliteSaver(sqlite3.connect(tmp_path / "stock.db", check_same_thread=False))
    stock.put(config("t"), {**_empty_checkpoint(), "id": str(uuid6())}, {"source": "input", "step": -1}, {})
    head = stock.get_tuple(config("t"))
    stock.delete_thread("t")
    stock.put(head.config, {**head.checkpoint, "id": str(uuid6())}, {"source": "loop", "step": 0}, {})
    assert stock.get_tuple(config("t")) is not None  # deleted, and back


def _empty_checkpoint() -> dict:
    from langgraph.checkpoint.base import empty_checkpoint

    return empty_checkpoint()


def test_a_late_write_after_delete_is_refused_and_the_thread_stays_deleted(db_url, tmp_path):
    with Agent(db=db_url) as agent:
        agent.reason(QUESTION, thread="t")
        with (tmp_path / "t.jsonl").open("w") as f:
            agent.export(f, ["t"])
    with savers.open_saver(db_url) as saver:
        head = saver.get_tuple(config("t"))
        with Agent(db=db_url) as agent:
            agent.delete("t")
        # A cancelled run's writes arriving now: its step's output, and its next checkpoint. The sync SQLite
        # saver holds the writes for the checkpoint's transaction (savers.sqlite.HeldWrites), where both are
        # refused: the put says so; elsewhere put_writes says so itself.
        late = lambda: saver.put_writes(head.config, [("results", ["late"])], "a-late-task")  # noqa: E731
        if isinstance(saver, Sqlite):
            late()
        else:
            with pytest.raises(ThreadDeleted, match="thread 't' was deleted while this run wrote to it"):
                late()
        with pytest.raises(ThreadDeleted, match="thread 't' was deleted while this run wrote to it"):
            saver.put(head.config, {**head.checkpoint, "id": str(uuid6())}, {"source": "loop", "step": 9}, {})
        if isinstance(saver, Sqlite):  # the held write was refused too, not stored for a thread that is gone
            assert saver.conn.execute("SELECT count(*) FROM writes WHERE thread_id = 't'").fetchone() == (0,)
        assert saver.get_tuple(config("t")) is None
        assert list_threads(saver) == []
    with Agent(db=db_url) as agent:
        # The thread id is free again: a new run starts afresh, and a backup of the old thread restores.
        assert agent.reason("What is 6*7?", thread="t").answer == "42"
        agent.delete("t")
        agent.import_file(tmp_path / "t.jsonl")
        assert agent.result("t").answer == "20"
        assert agent.replay("t", agent.history("t")[1].checkpoint_id).answer == "20"
