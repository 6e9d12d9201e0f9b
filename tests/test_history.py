"""`history` means what it says: one documented order, pages that show every checkpoint exactly once, and a
constant number of queries however long the thread (counted at the database driver, not assumed)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import contextmanager

import psycopg
import pytest
from langgraph.types import StateUpdate

import savers
from agent import Agent, AsyncAgent, BadInput, CheckpointNotFound
from agent.history import history_order
from agent.models import make_model
from graphs.cot import build_graph

QUESTION = "What is 2*3+4*5-6?"  # four steps with the offline model


def config(thread: str, checkpoint_id: str | None = None) -> dict:
    configurable = {"thread_id": thread, "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def forked_thread(agent: Agent, thread: str = "t") -> None:
    """A run, a replay and an edit from earlier checkpoints, and a second run on the same thread."""
    agent.reason(QUESTION, thread=thread)
    rows = agent.history(thread)
    agent.replay(thread, rows[2].checkpoint_id)
    agent.fork(thread, rows[4].checkpoint_id, {"plan.3": "Add the result of step 2 and the result of step 1"})
    agent.fork(thread, rows[3].checkpoint_id, {"question": "What is 6*7?"}, run=False)
    agent.reason("What is 1+1?", thread=thread, new=True)


def skewed_copy(db_url: str, source: str, target: str) -> None:
    """Copy a thread through the saver interface as if every checkpoint came from a process whose clock lags
    the one before: each id is lower than its parent's, and all timestamps are the same."""
    with savers.open_saver(db_url) as saver:
        tuples = sorted(saver.list(config(source)), key=lambda t: t.checkpoint["id"])
        new_ids = {t.checkpoint["id"]: f"1f000000-0000-6000-8000-{10**9 - n:012d}" for n, t in enumerate(tuples)}
        for tup in tuples:
            parent = (tup.parent_config or {}).get("configurable", {}).get("checkpoint_id")
            checkpoint = {**tup.checkpoint, "id": new_ids[tup.checkpoint["id"]], "ts": "2026-01-01T00:00:00+00:00"}
            stored = saver.put(config(target, new_ids.get(parent)), checkpoint, tup.metadata,
                               dict(checkpoint["channel_versions"]))
            by_task: dict[str, list] = {}
            for task_id, channel, value in tup.pending_writes or []:
                by_task.setdefault(task_id, []).append((channel, value))
            for task_id, writes in by_task.items():
                saver.put_writes(stored, writes, task_id)


def page_back(history, limit: int) -> list:
    """Every page from the end back to the start, following next_before; the pages joined oldest first."""
    pages, before = [], None
    while True:
        page = history(limit=limit, before=before)
        assert 1 <= len(page) <= limit
        pages.insert(0, page)
        if page.next_before is None:
            break
        assert page.next_before == page[0].checkpoint_id
        before = page.next_before
    assert all(len(page) == limit for page in pages[1:])  # only the oldest page may be short
    return [row for page in pages for row in page]


def assert_parents_first(rows) -> None:
    seen = set()
    for row in rows:
        assert row.parent_checkpoint_id is None or row.parent_checkpoint_id in seen, row
        seen.add(row.checkpoint_id)


def test_order_is_by_id_with_every_parent_before_its_children():
    links = {"b": None, "a": "b", "d": "a", "c": "b", "0": "c"}  # "a" and "0" have ids below their parents'
    assert history_order(links) == ["b", "a", "c", "0", "d"]
    assert history_order(dict(reversed(links.items()))) == ["b", "a", "c", "0", "d"]
    assert history_order({"b": "gone", "a": "b"}) == ["b", "a"]  # a parent pruned away: its child starts the list
    assert sorted(history_order({"x": "y", "y": "x", "z": None})) == ["x", "y", "z"]  # a damaged loop hides nothing


def test_pages_show_every_checkpoint_once_across_forks_and_clock_skew(db_url):
    with Agent(db=db_url, model="offline") as agent:
        forked_thread(agent)
        skewed_copy(db_url, "t", "skewed")
        for thread in ("t", "skewed"):
            whole = agent.history(thread)
            assert whole.next_before is None and len({r.checkpoint_id for r in whole}) == len(whole) > 20
            assert_parents_first(whole)
            assert sum(r.head for r in whole) == 1
            for limit in (1, 2, 3):
                assert page_back(lambda **kw: agent.history(thread, **kw), limit) == whole, (thread, limit)
        straight = [r.checkpoint_id for r in agent.history("t")]
        assert straight == sorted(straight)  # ids from one process agree with the parent links: id order
        skewed = agent.history("skewed")
        assert len({r.created_at for r in skewed}) == 1
        assert [r.checkpoint_id for r in skewed] != sorted(r.checkpoint_id for r in skewed)
        # the copy is the same tree: each row still reads against its own parent
        assert sorted(r.summary for r in skewed) == sorted(r.summary for r in agent.history("t"))
        assert agent.history("t", before=straight[1]) == agent.history("t")[:1]
        assert agent.history("t", before=straight[0]) == []


def test_async_agent_pages_the_same_way(db_url):
    with Agent(db=db_url, model="offline") as agent:
        forked_thread(agent)
        whole = agent.history("t")

    async def main():
        async with AsyncAgent(db=db_url, model="offline") as agent:
            pages, before = [], None
            while True:
                page = await agent.history("t", limit=2, before=before)
                pages.insert(0, page)
                if (before := page.next_before) is None:
                    return [row for page in pages for row in page], await agent.history("t")

    paged, unpaged = asyncio.run(main())
    assert paged == unpaged == whole


def test_bad_paging_input_is_refused(tmp_path):
    with Agent(db=f"sqlite:///{tmp_path / 'a.db'}", model="offline") as agent:
        agent.reason(QUESTION, thread="t")
        for limit in (0, -3):
            with pytest.raises(BadInput, match="--limit"):
                agent.history("t", limit=limit)
        with pytest.raises(CheckpointNotFound, match="no checkpoint 'nope'"):
            agent.history("t", before="nope")


def test_cli_pages_with_next_before(cli, tmp_path):
    db = ["--db", f"sqlite:///{tmp_path / 'agent.db'}"]
    with Agent(db=db[1], model="offline") as agent:
        forked_thread(agent)
    whole = json.loads(cli("history", "--thread", "t", "--json", *db).stdout)
    pages, before = [], []
    while True:
        result = cli("history", "--thread", "t", "--limit", "10", *before, "--json", *db)
        assert result.returncode == 0, result.stderr
        page = json.loads(result.stdout)
        assert page["thread_id"] == "t" and len(page["checkpoints"]) <= 10
        pages.insert(0, page["checkpoints"])
        if page["next_before"] is None:
            break
        before = ["--before", page["next_before"]]
    assert len(pages) > 2 and [row for page in pages for row in page] == whole

    text = cli("history", "--thread", "t", "--limit", "3", *db)
    assert text.returncode == 0 and f"--limit 3 --before {whole[-3]['checkpoint_id']}" in text.stdout
    for args, message in [(("--limit", "0"), "--limit 0"), (("--before", "nope"), "no checkpoint 'nope'"),
                          (("--before", ""), "checkpoint id is empty")]:
        result = cli("history", "--thread", "t", *args, *db)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
        assert "Traceback" not in result.stderr


# -- no N+1: the statements one `history` sends to the database, for 10 and for 1,000 checkpoints ------------


def grow(db_url: str, thread: str, checkpoints: int) -> None:
    """A real run, then edits (each one checkpoint) until the thread holds `checkpoints`: a straight line with
    a branch off an early checkpoint every 250, the result list growing by one item per edit."""
    with savers.open_saver(db_url) as saver:
        graph = build_graph(make_model("offline")).compile(checkpointer=saver)
        graph.invoke({"question": QUESTION, "plan": [], "results": [], "draft": "", "answer": "",
                      "validation": {}, "revisions": 0}, config(thread))
        made = len(list(saver.list(config(thread))))
        early = [t.checkpoint["id"] for t in saver.list(config(thread))][-3]
        results: list[str] = []
        while made < checkpoints:
            batch = min(250, checkpoints - made)
            updates = []
            for _ in range(batch):
                results = [*results, f"result {len(results) + 1}"]
                updates.append([StateUpdate({"results": results, "draft": results[-1]}, "execute")])
            start = config(thread, early) if made > 250 else config(thread)
            graph.bulk_update_state(start, updates)
            made += batch


@contextmanager
def statements(agent: Agent):
    """Every SQL statement the agent sends while the block runs: SQLite's own trace of the saver's connection;
    for Postgres, each statement psycopg's cursors execute, on any connection of the pool."""
    sent: list[str] = []
    conn = agent._core.saver.conn
    if isinstance(conn, sqlite3.Connection):
        conn.set_trace_callback(sent.append)
        try:
            yield sent
        finally:
            conn.set_trace_callback(None)
        return
    with pytest.MonkeyPatch.context() as patch:
        for name in ("execute", "executemany"):
            original = getattr(psycopg.Cursor, name)

            def counted(self, query, *args, _original=original, **kwargs):
                sent.append(str(query))
                return _original(self, query, *args, **kwargs)

            patch.setattr(psycopg.Cursor, name, counted)
        yield sent


def test_history_of_a_long_thread_holds_a_piece_of_it_in_memory(tmp_path):
    """Read in one list(), the snapshots of a whole thread were all in memory at once, each with the whole
    state (2,000 steps of the offline model: 811 MB); now a piece of them, and the rows."""
    import tracemalloc

    from agent.history import READ_PIECE

    url = f"sqlite:///{tmp_path / 'long.db'}"
    grow(url, "large", 1000)
    with Agent(db=url) as agent:
        agent.history("large", limit=READ_PIECE)
        peaks = {}
        for limit in (READ_PIECE, None):
            tracemalloc.start()
            try:
                rows = agent.history("large", limit=limit)
                peaks[limit] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        assert len(rows) == 1000 and peaks[None] < 3 * peaks[READ_PIECE], peaks  # read at once: 10.7x


def test_history_costs_a_few_queries_per_piece_of_checkpoints_not_one_per_checkpoint(db_url):
    """history reads a thread READ_PIECE checkpoints at a time (each holds the whole state; all at once, a long
    thread took memory in the square of its length): the statements of one page of that size, per piece."""
    from agent.history import READ_PIECE

    grow(db_url, "small", 10)
    grow(db_url, "large", 1000)
    with Agent(db=db_url) as agent:
        counts = {}
        for thread in ("small", "large"):
            with statements(agent) as sent:
                rows = agent.history(thread)
            counts[thread] = len(sent)
            assert len(rows) >= {"small": 10, "large": 1000}[thread]
        assert rows[-1].summary == "step 992 → result 992" and sum(r.head for r in rows) == 1
        with statements(agent) as sent:
            assert agent.history("large", limit=READ_PIECE) == rows[-READ_PIECE:]
        pieces = -(-len(rows) // READ_PIECE)
        assert 0 < counts["small"] <= len(sent) and counts["large"] <= len(sent) * pieces < len(rows) / 2, (
            counts, len(sent))
        pages = {}
        for limit in (10, 200):
            with statements(agent) as sent:
                assert agent.history("large", limit=limit, before=rows[500].checkpoint_id) == rows[500 - limit:500]
            pages[limit] = len(sent)
        # A page costs what its place in the thread costs (SQLite follows the delta chains of values stored
        # before it, one level a statement) per piece it is read in, not one more per row.
        assert pages[200] <= pages[10] * -(-200 // READ_PIECE), pages
