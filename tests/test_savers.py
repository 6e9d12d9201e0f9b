"""Our savers keep LangGraph's whole checkpointer contract, lose no step to a crash, and stay small.

A small graph stands in for any LangGraph app: each step appends an item to a list and returns the whole
list (as graphs/cot.py's execute does), so a thread's state grows with every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TypedDict

import ormsgpack
import psycopg
import pytest
from conftest import fresh_db_url
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

import savers
from savers.threads import CheckpointNotFound, ThreadExists

NOTE = "A note long enough to be stored apart from the checkpoint. " * 8


class State(TypedDict, total=False):
    items: list[str]
    step: int
    target: int
    reset_at: int
    note: str


def _step(state: State) -> dict:
    step = state.get("step", 0) + 1
    items = [] if step == state.get("reset_at") else [*state.get("items", []), f"item {step}: {'x' * 24}"]
    return {"items": items, "step": step}


def build():
    graph = StateGraph(State)
    graph.add_node("step", _step)
    graph.add_edge(START, "step")
    graph.add_conditional_edges("step", lambda s: "step" if s["step"] < s["target"] else END, ["step", END])
    return graph


def config(thread: str, checkpoint_id: str | None = None, **configurable) -> dict:
    conf = {"thread_id": thread, **configurable}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf, "recursion_limit": 10_000}


def start(target: int, **extra) -> State:
    return State(items=[], step=0, target=target, note=NOTE, **extra)


def run(saver, thread: str, state: State | None, **configurable) -> dict:
    return build().compile(checkpointer=saver).invoke(state, config(thread, **configurable), durability="sync")


def history(saver, thread: str) -> list[tuple]:
    """What a user of the thread can see, newest first, without ids that differ from saver to saver."""
    return [(t.metadata.get("step"), t.checkpoint["channel_values"], sorted((c, repr(v)) for _, c, v in t.pending_writes))
            for t in saver.list({"configurable": {"thread_id": thread}})]


def ids(saver, thread: str) -> list[str]:
    return [t.checkpoint["id"] for t in saver.list({"configurable": {"thread_id": thread}})]


def lineage(saver, thread: str, checkpoint_id: str) -> list[str]:
    chain, conf = [], config(thread, checkpoint_id)
    while conf:
        tup = saver.get_tuple(conf)
        chain.append(tup.checkpoint["id"])
        conf = tup.parent_config
    return chain


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def any_url(request, tmp_path) -> str:
    """db_url's databases, and memory:// (a fresh in-memory saver per open)."""
    return "memory://" if request.param == "memory" else fresh_db_url(request.param, request, tmp_path)


# -- the contract -------------------------------------------------------------------------------------------


def test_the_official_conformance_suite_reports_full_for_every_async_saver(any_url):
    from langgraph.checkpoint.conformance import checkpointer_test, validate

    @checkpointer_test(name=any_url.split(":")[0])
    async def ours():
        async with savers.open_async_saver(any_url) as saver:
            yield saver

    report = asyncio.run(validate(ours))
    failures = [failure for result in report.results.values() for failure in result.failures]
    assert failures == []
    assert len(report.results) == 8
    assert all(result.detected and result.passed for result in report.results.values())
    assert report.conformance_level() == "FULL"


def test_every_checkpoint_reads_back_as_written_across_resets_forks_and_reopening(db_url):
    reference = InMemorySaver()
    with savers.open_saver(db_url) as saver:
        for s in (reference, saver):
            run(s, "t", start(30, reset_at=12))
        assert history(saver, "t") == history(reference, "t")
    # A new saver (as a new process has): nothing remembered, every value comes from the database.
    with savers.open_saver(db_url) as saver:
        for s in (reference, saver):
            graph = build().compile(checkpointer=s)
            at_step_20 = next(t for t in s.list(config("t")) if t.metadata["step"] == 20)
            edited = graph.update_state(at_step_20.config, {"items": ["edited", *at_step_20.checkpoint[
                "channel_values"]["items"][:3]]})
            graph.invoke(None, {**edited, "recursion_limit": 100}, durability="sync")
        assert history(saver, "t") == history(reference, "t")
        latest = saver.get_tuple(config("t")).checkpoint["channel_values"]
        assert latest["items"][:1] == ["edited"] and latest["step"] == 30 and latest["note"] == NOTE


def test_the_async_savers_read_back_what_the_sync_ones_wrote(db_url):
    with savers.open_saver(db_url) as saver:
        run(saver, "t", start(25))
        expected = history(saver, "t")

    async def read():
        async with savers.open_async_saver(db_url) as saver:
            graph = build().compile(checkpointer=saver)
            got = [(t.metadata.get("step"), t.checkpoint["channel_values"],
                    sorted((c, repr(v)) for _, c, v in t.pending_writes))
                   async for t in saver.alist({"configurable": {"thread_id": "t"}})]
            await graph.ainvoke({"target": 30}, config("t"), durability="sync")
            return got

    assert asyncio.run(read()) == expected
    with savers.open_saver(db_url) as saver:
        assert saver.get_tuple(config("t")).checkpoint["channel_values"]["items"][-1].startswith("item 30:")


def _checkpoint(number: int, values: dict, version: str) -> dict:
    return {**empty_checkpoint(), "id": f"1f000000-0000-6000-8000-{number:012}", "ts": "2024-01-01T00:00:00+00:00",
            "channel_values": values, "channel_versions": {c: version for c in values}}


def _root(thread) -> dict:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}


ITEMS = [f"item {i} " + "x" * 40 for i in range(5)]


class _Calls:
    """The same saver calls, made on a sync saver or (through its a* methods) on an async one."""

    def __init__(self, saver, is_async: bool) -> None:
        self.saver, self.is_async = saver, is_async

    async def __call__(self, name: str, *args, **kwargs):
        if not self.is_async:
            return getattr(self.saver, name)(*args, **kwargs)
        if name == "list":
            return [t async for t in self.saver.alist(*args, **kwargs)]
        return await getattr(self.saver, "a" + name)(*args, **kwargs)


def _on_each_saver(url: str, body) -> None:
    """body(calls, reference) on the sync saver, then on the async one, each against an InMemorySaver."""
    async def go():
        with savers.open_saver(url) as saver:
            await body(_Calls(saver, False), _Calls(InMemorySaver(), False), "sync")
        async with savers.open_async_saver(url) as saver:
            await body(_Calls(saver, True), _Calls(InMemorySaver(), False), "async")

    asyncio.run(go())


def test_a_checkpoint_put_twice_stays_readable(db_url):
    """Review found: the second put stored the list as a delta of its own row, so every read of the thread,
    by any saver later, failed with RecursionError (SQLite)."""
    async def body(call, reference, kind):
        for saver in (call, reference):
            first = await saver("put", _root(kind), _checkpoint(1, {"items": ITEMS[:1]}, "1"),
                                {"source": "input", "step": -1}, {"items": "1"})
            for _ in range(2):
                await saver("put", first, _checkpoint(2, {"items": ITEMS}, "2"), {"source": "loop", "step": 0},
                            {"items": "2"})
        got = (await call("get_tuple", _root(kind))).checkpoint["channel_values"]
        assert got == (await reference("get_tuple", _root(kind))).checkpoint["channel_values"] == {"items": ITEMS}

    _on_each_saver(db_url, body)
    with savers.open_saver(db_url) as saver:  # and in a saver that remembers nothing of the puts
        assert [t.checkpoint["channel_values"]["items"] for t in saver.list(_root("sync"))] == [ITEMS, ITEMS[:1]]


@pytest.mark.parametrize("value", [1e16, 1.5e300, -0.0, 0.1, 123456789.0, "lone \ud800 surrogate"], ids=repr)
def test_a_value_reads_back_as_it_was_put_with_its_type(db_url, value):
    """Review found on Postgres (whose jsonb numbers are numeric): 1e16 read back as the int 10000000000000000,
    -0.0 as 0.0, and a short string holding a lone surrogate made put fail."""
    async def body(call, reference, kind):
        for saver in (call, reference):
            await saver("put", _root(kind), _checkpoint(1, {"v": value}, "1"), {"source": "input", "step": -1},
                        {"v": "1"})
        got = (await call("get_tuple", _root(kind))).checkpoint["channel_values"]["v"]
        expected = (await reference("get_tuple", _root(kind))).checkpoint["channel_values"]["v"]
        assert (type(got), repr(got)) == (type(expected), repr(expected))

    _on_each_saver(db_url, body)


def test_metadata_holding_a_lone_surrogate_is_stored_without_it(db_url):
    async def body(call, reference, kind):
        await call("put", _root(kind), _checkpoint(1, {"n": 1}, "1"), {"source": "input", "step": -1,
                                                                       "note": "lone \ud800", "big": 2**70},
                   {"n": "1"})
        metadata = (await call("get_tuple", _root(kind))).metadata
        assert metadata["note"] == "lone " and metadata["big"] == 2**70  # past 64 bits, kept beside the surrogate

    _on_each_saver(db_url, body)


@pytest.mark.parametrize("thread", [5, __import__("uuid").UUID(int=7)], ids=["int", "uuid"])
def test_a_thread_put_under_an_id_that_is_not_a_str_is_read_under_it(db_url, thread):
    """Review found: put stored str(thread_id), but get_tuple and list passed the id to SQL as it was - on
    Postgres an int failed ('operator does not exist: text = smallint': a graph invoked with thread_id=5
    could not start), on SQLite a UUID could not be bound."""
    async def body(call, reference, kind):
        root = {"configurable": {"thread_id": thread, "checkpoint_ns": "", "kind": kind}}
        await call("put", root, _checkpoint(1, {"n": 1}, "1"), {"source": "input", "step": -1}, {"n": "1"})
        assert (await call("get_tuple", root)).checkpoint["channel_values"] == {"n": 1}
        for limit in (None, 1):
            assert [t.checkpoint["id"] for t in await call("list", root, limit=limit)] == [_checkpoint(1, {}, "")["id"]]
        await call("delete_thread", thread)
        assert await call("get_tuple", root) is None

    _on_each_saver(db_url, body)


# -- copy_thread, delete_for_runs, prune on the sync savers ---------------------------------------------------


def test_copy_thread_copies_every_checkpoint_with_its_writes(any_url):
    with savers.open_saver(any_url) as saver:
        run(saver, "source", start(12))
        saver.copy_thread("source", "copy")
        assert ids(saver, "copy") == ids(saver, "source")
        assert history(saver, "copy") == history(saver, "source")
        run(saver, "copy", {"target": 15})  # the copy lives on by itself
        assert saver.get_tuple(config("copy")).checkpoint["channel_values"]["step"] == 15
        assert saver.get_tuple(config("source")).checkpoint["channel_values"]["step"] == 12


def test_copy_thread_up_to_a_checkpoint_copies_its_lineage_only(any_url):
    with savers.open_saver(any_url) as saver:
        run(saver, "source", start(10))
        graph = build().compile(checkpointer=saver)
        at_4 = next(t for t in saver.list(config("source")) if t.metadata["step"] == 4)
        fork = graph.update_state(at_4.config, {"items": ["fork"]})
        graph.invoke(None, {**fork, "recursion_limit": 100}, durability="sync")
        on_fork = next(t for t in saver.list(config("source"))
                       if t.metadata["step"] == 7 and t.checkpoint["channel_values"]["items"][0] == "fork")

        saver.copy_thread("source", "branch", up_to=on_fork.checkpoint["id"])

        assert ids(saver, "branch") == lineage(saver, "source", on_fork.checkpoint["id"])
        head = saver.get_tuple(config("branch"))
        assert head.checkpoint == on_fork.checkpoint
        assert head.pending_writes == []  # they belong to the step after it, which the branch has not run
        for copied in saver.list(config("branch")):
            if copied.checkpoint["id"] != head.checkpoint["id"]:
                original = saver.get_tuple(config("source", copied.checkpoint["id"]))
                assert copied.pending_writes == original.pending_writes != []
        graph.invoke(None, config("branch"), durability="sync")
        assert saver.get_tuple(config("branch")).checkpoint["channel_values"]["items"][:2] == [
            "fork", "item 5: " + "x" * 24]


def test_copy_thread_refuses_an_existing_target_and_an_unknown_checkpoint(any_url):
    with savers.open_saver(any_url) as saver:
        run(saver, "a", start(3))
        run(saver, "b", start(3))
        with pytest.raises(ThreadExists, match="'b' already has checkpoints"):
            saver.copy_thread("a", "b")
        with pytest.raises(CheckpointNotFound, match="no checkpoint nope"):
            saver.copy_thread("a", "c", up_to="nope")
        assert ids(saver, "c") == []


def test_delete_for_runs_deletes_a_run_and_keeps_the_next_one_readable(any_url):
    with savers.open_saver(any_url) as saver:
        run(saver, "t", start(10), run_id="first")
        run(saver, "t", {"target": 16}, run_id="second")
        before = saver.get_tuple(config("t")).checkpoint

        saver.delete_for_runs(["first"])

        remaining = list(saver.list(config("t")))
        assert {t.metadata["run_id"] for t in remaining} == {"second"}
        # The second run's checkpoints still read in full: values the first run stored are kept.
        assert saver.get_tuple(config("t")).checkpoint == before
        assert all(len(values["items"]) == values["step"] for t in remaining
                   if (values := t.checkpoint["channel_values"]).get("items"))


def test_prune_keep_latest_leaves_one_self_contained_checkpoint_per_thread(any_url):
    with savers.open_saver(any_url) as saver:
        for thread in ("t", "other"):
            run(saver, thread, start(40))
        latest = saver.get_tuple(config("t"))
        # A pending write that extends the stored list (so it is stored as a delta against older rows).
        items = latest.checkpoint["channel_values"]["items"]
        saver.put_writes(latest.config, [("items", [*items, "pending"])], "task-1")
        latest = saver.get_tuple(config("t"))
        assert latest.pending_writes == [("task-1", "items", [*items, "pending"])]

        saver.prune(["t"], strategy="keep_latest")

        assert ids(saver, "t") == [latest.checkpoint["id"]]
        kept = saver.get_tuple(config("t"))
        assert (kept.checkpoint, kept.pending_writes, kept.parent_config) == (latest.checkpoint, latest.pending_writes,
                                                                             None)
        assert len(ids(saver, "other")) == 42
        run(saver, "t", {"target": 45})
        assert saver.get_tuple(config("t")).checkpoint["channel_values"]["items"][-1].startswith("item 45:")

        saver.prune(["t", "other"], strategy="delete")
        assert ids(saver, "t") == ids(saver, "other") == []


def test_prune_refuses_threads_that_use_a_delta_channel(any_url):
    with savers.open_saver(any_url) as saver:
        checkpoint = empty_checkpoint()
        saver.put({"configurable": {"thread_id": "d", "checkpoint_ns": ""}}, checkpoint,
                  {"source": "loop", "step": 1, "counters_since_delta_snapshot": {"messages": [1, 1]}}, {})
        with pytest.raises(NotImplementedError, match="DeltaChannel: d"):
            saver.prune(["d"], strategy="keep_latest")
        assert ids(saver, "d") == [checkpoint["id"]]


def test_a_list_decodes_what_its_checkpoints_share_once_and_shares_no_item_that_can_change(db_url):
    """Every checkpoint of a run holds all the items before it; list() decoded each whole, so a page of 50
    checkpoints decoded 50 copies of the thread's lists. One decoder per list() now keeps a list that values
    extend or refer to, and hands out copies: strings are shared between the lists it returns, items that
    can change (dicts) are decoded for each."""

    class Notes(TypedDict, total=False):
        step: int
        log: list[str]
        notes: list[dict]
        with_notes: bool

    def note(state: Notes) -> dict:
        n = state.get("step", 0) + 1
        update = {"step": n, "log": [*state.get("log", []), f"line {n}: {'y' * 40}"]}
        if state.get("with_notes"):
            update["notes"] = [*state.get("notes", []), {"n": n, "tags": [n]}]
        return update

    graph = StateGraph(Notes)
    graph.add_node("note", note)
    graph.add_edge(START, "note")
    graph.add_conditional_edges("note", lambda s: "note" if s["step"] < 300 else END, ["note", END])
    with savers.open_saver(db_url) as saver:
        compiled = graph.compile(checkpointer=saver)
        compiled.invoke({}, config("strings"), durability="sync")
        compiled.invoke({"with_notes": True}, config("dicts"), durability="sync")
        loaded, load = [], saver.serde.load_inner

        def counted(type_, data):
            loaded.append(len(data))
            return load(type_, data)

        saver.serde.load_inner = counted
        pages = {"strings": list(saver.list(config("strings"), limit=50))}
        page_bytes = sum(loaded)
        loaded.clear()
        saver.get_tuple(pages["strings"][0].config)
        assert page_bytes < 5 * sum(loaded), (page_bytes, sum(loaded))  # each decoded whole: ~50x the newest alone
        pages["dicts"] = list(saver.list(config("dicts"), limit=50))
        for listed in pages.values():
            alone = [saver.get_tuple(t.config) for t in listed]
            assert [t.checkpoint["channel_values"] for t in listed] == [t.checkpoint["channel_values"] for t in alone]
            first, second = (t.checkpoint["channel_values"] for t in listed[:2])
            first["log"].append("changed")
            assert second["log"][-1].startswith("line 299:")
        first["notes"][5]["tags"].append("changed")
        assert second["notes"][5] == {"n": 6, "tags": [6]}


def _nested(checkpointer, stateful: bool, steps: int):
    """A graph that runs a two-node subgraph at each of its steps: checkpoints in a namespace of the subgraph's
    own ("sub", when `stateful`) or in one namespace per run of it ("sub:<task id>")."""
    class Nested(TypedDict, total=False):
        items: list[str]
        step: int

    inner = StateGraph(Nested)
    inner.add_node("a", lambda s: {"items": [*s.get("items", []), "a"]})
    inner.add_node("b", lambda s: {"items": [*s["items"], "b"]})
    inner.add_edge(START, "a")
    inner.add_edge("a", "b")
    inner.add_edge("b", END)
    outer = StateGraph(Nested)
    outer.add_node("sub", inner.compile(checkpointer=True if stateful else None))
    outer.add_node("count", lambda s: {"step": s.get("step", 0) + 1})
    outer.add_edge(START, "sub")
    outer.add_edge("sub", "count")
    outer.add_conditional_edges("count", lambda s: "sub" if s["step"] < steps else END, ["sub", END])
    return outer.compile(checkpointer=checkpointer)


def _listing(thread: str, ns: str | None) -> dict:
    """A list() config: one namespace of the thread, or (None) all of them."""
    return {"configurable": {"thread_id": thread} if ns is None else {"thread_id": thread, "checkpoint_ns": ns}}


def _page(saver, thread: str, before, ns: str | None = None) -> list:
    return list(saver.list(_listing(thread, ns), before=before, limit=50))


def _work(saver, thread: str, before, ns: str | None = None) -> int:
    """What listing a page cost the database: SQLite's virtual machine steps, or the checkpoint rows
    Postgres read from the table (EXPLAIN ANALYZE of the page's query; keys read from the index alone are
    not counted)."""
    if isinstance(saver.conn, sqlite3.Connection):
        steps = [0]

        def step() -> int:
            steps[0] += 1
            return 0

        saver.conn.set_progress_handler(step, 1)
        _page(saver, thread, before, ns)
        saver.conn.set_progress_handler(None, 1)
        return steps[0]
    query, params, _ = saver._list_query(_listing(thread, ns), None, before, 50)

    def rows(node: dict) -> int:
        read = node.get("Relation Name") == "checkpoints" and node["Node Type"] != "Index Only Scan"
        here = node["Actual Rows"] * node["Actual Loops"] if read else 0
        return here + sum(rows(child) for child in node.get("Plans", []))

    with saver._cursor() as cur:
        return int(rows(cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params).fetchone()["QUERY PLAN"][0]["Plan"]))


@pytest.mark.parametrize("stateful", [True, False], ids=["one-subgraph-namespace", "a-namespace-per-run"])
def test_a_page_of_every_namespace_costs_the_page_not_the_thread(db_url, stateful):
    """A thread listed without a namespace (as an export lists it) a page at a time: one query ordered by
    checkpoint_id sorted every checkpoint of the thread before the page's end for each page (its primary
    key orders by namespace first), so paging through a thread cost N^2. Each namespace is read in key order
    now (or, past a few namespaces on SQLite, only the keys are sorted); the pages are the same."""
    with savers.open_saver(db_url) as saver:
        _nested(saver, stateful, steps := 150 if stateful else 60).invoke({"items": []}, config("t"), durability="sync")
        whole = list(saver.list({"configurable": {"thread_id": "t"}}))
        assert len({t.config["configurable"]["checkpoint_ns"] for t in whole}) == (2 if stateful else steps + 1)
        paged, before = [], None
        while page := _page(saver, "t", before):
            paged += page
            before = page[-1].config
        key = lambda t: (t.config, t.parent_config, t.checkpoint, t.metadata, sorted(t.pending_writes))  # noqa: E731
        assert [key(t) for t in paged] == [key(t) for t in whole] and len(whole) > 300
        # Against a page of one namespace (read in the primary key's order): SQLite 1.5x the steps (two
        # namespaces, two of the statements that read what the rows refer to), Postgres as many rows; before,
        # 7.2x and 18x. Past 8 namespaces SQLite sorts the keys of the whole thread from the index instead of
        # its rows (1.8 ms instead of 11 at 6,000 checkpoints): as many steps, so not counted here.
        every, one = _work(saver, "t", whole[5].config), _work(saver, "t", whole[5].config, ns="")
        if stateful or not isinstance(saver.conn, sqlite3.Connection):
            assert every < 2 * one, (every, one)

    async def listed() -> list:
        async with savers.open_async_saver(db_url) as saver:
            return [t async for t in saver.alist({"configurable": {"thread_id": "t"}}, before=whole[99].config,
                                                 limit=50)]

    assert [key(t) for t in asyncio.run(listed())] == [key(t) for t in whole[100:150]]


# -- durable against a crash ----------------------------------------------------------------------------------

CHILD = """
import json, sys
sys.path[:0] = [{tests!r}]
import savers
from test_savers import build, config, start
with savers.open_saver({url!r}) as saver:
    put = saver.put
    def reported(*args):
        stored = put(*args)
        print(json.dumps([stored["configurable"]["checkpoint_id"], args[2]["step"]]), flush=True)
        return stored
    saver.put = reported
    build().compile(checkpointer=saver).invoke(start(10_000), config("t"), durability="sync")
"""
# The async saver, whose SQLite writes run on the event loop's thread (savers.sqlite.INLINE_PRAGMAS).
ASYNC_CHILD = """
import asyncio, json, sys
sys.path[:0] = [{tests!r}]
import savers
from test_savers import build, config, start
async def main():
    async with savers.open_async_saver({url!r}) as saver:
        aput = saver.aput
        async def reported(*args):
            stored = await aput(*args)
            print(json.dumps([stored["configurable"]["checkpoint_id"], args[2]["step"]]), flush=True)
            return stored
        saver.aput = reported
        await build().compile(checkpointer=saver).ainvoke(start(10_000), config("t"), durability="sync")
asyncio.run(main())
"""


@pytest.mark.parametrize("child_code", [CHILD, ASYNC_CHILD], ids=["sync", "async"])
def test_a_step_whose_checkpoint_was_saved_survives_sigkill(db_url, child_code):
    child = subprocess.Popen([sys.executable, "-c", child_code.format(tests=str(Path(__file__).parent), url=db_url)],
                             stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(60):
            saved, step = json.loads(child.stdout.readline())
        child.send_signal(signal.SIGKILL)  # mid-way through a later step, most likely inside a put
    finally:
        child.kill()
        child.wait()
    with savers.open_saver(db_url) as saver:
        kept = saver.get_tuple(config("t", saved))
        assert kept is not None and kept.metadata["step"] == step
        assert kept.checkpoint["channel_values"]["items"][-1].startswith(f"item {step}:")
        for tup in saver.list(config("t")):  # whatever else made it is whole
            assert len(tup.checkpoint["channel_values"].get("items", [])) == max(tup.metadata["step"], 0)


def _pending(path: Path) -> list[str]:
    """The task ids of the writes stored in a SQLite file, read by another connection (as another process)."""
    from savers.sqlite import folded_rows

    with contextlib.closing(sqlite3.connect(path)) as conn:
        ids = {task_id for (task_id,) in conn.execute("SELECT DISTINCT task_id FROM writes")}
        for row in conn.execute("SELECT thread_id, checkpoint_ns, parent_checkpoint_id, parent_writes FROM checkpoints "
                                "WHERE parent_writes IS NOT NULL"):  # a step's writes, carried by its child's row
            ids.update(write[3] for write in folded_rows(*row))
        return sorted(ids)


def test_sync_sqlite_commits_a_steps_writes_with_its_checkpoint_and_never_holds_them_long(tmp_path):
    """put_writes holds its row for the next put's transaction (savers.sqlite.HeldWrites): one commit per step.
    It is committed anyway within HOLD_WRITES_S, before any other call on the saver reads, at once for an
    error or interrupt, and at close."""
    from langgraph.checkpoint.base import WRITES_IDX_MAP

    from savers.sqlite import HOLD_WRITES_S

    path = tmp_path / "held.db"
    root = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    error_channel = next(iter(WRITES_IDX_MAP))
    with savers.open_saver(f"sqlite:///{path}") as saver:
        stored = saver.put(root, empty_checkpoint(), {"source": "input", "step": -1}, {})
        saver.put_writes(stored, [("items", ["a"])], "task-a")
        assert _pending(path) == []  # held
        saver.put(root, empty_checkpoint(), {"source": "update", "step": 0}, {})
        assert _pending(path) == ["task-a"]  # with the checkpoint, in its transaction

        saver.put_writes(stored, [("items", ["b"])], "task-b")  # no put follows: a slower task still runs
        started = time.monotonic()
        while _pending(path) != ["task-a", "task-b"] and time.monotonic() < started + 5:
            time.sleep(HOLD_WRITES_S / 2)
        assert _pending(path) == ["task-a", "task-b"] and time.monotonic() - started < 1

        saver.put_writes(stored, [("items", ["c"])], "task-c")
        assert {t for t, _, _ in saver.get_tuple(stored).pending_writes} == {"task-a", "task-b", "task-c"}
        saver.put_writes(stored, [("items", ["d"])], "task-d")
        saver.put_writes(stored, [(error_channel, "it failed")], "task-e")
        assert _pending(path) == ["task-a", "task-b", "task-c", "task-d", "task-e"]  # the error, and what was held
        saver.put_writes(stored, [("items", ["f"])], "task-f")
        assert "task-f" not in _pending(path)
    assert "task-f" in _pending(path)  # committed at close


def test_async_sqlite_commits_a_steps_writes_with_its_checkpoint_and_never_holds_them_long(tmp_path):
    """The async saver holds aput_writes' rows as the sync one does (on its inline connection, for the next
    aput's transaction): committed anyway within HOLD_WRITES_S, before a read, at once for an error or
    interrupt, and at close; a put then refused names the held write of its thread SQLite refused for good."""
    from langgraph.checkpoint.base import WRITES_IDX_MAP

    from savers.errors import StorageError
    from savers.sqlite import HOLD_WRITES_S

    path = tmp_path / "held.db"
    error_channel = next(iter(WRITES_IDX_MAP))

    async def main():
        async with savers.open_async_saver(f"sqlite:///{path}") as saver:
            stored = await saver.aput(_root("t"), empty_checkpoint(), {"source": "input", "step": -1}, {})
            await saver.aput_writes(stored, [("items", ["a"])], "task-a")
            assert _pending(path) == []  # held
            await saver.aput(_root("t"), empty_checkpoint(), {"source": "update", "step": 0}, {})
            assert _pending(path) == ["task-a"]  # with the checkpoint, in its transaction

            await saver.aput_writes(stored, [("items", ["b"])], "task-b")  # no put follows
            started = time.monotonic()
            while _pending(path) != ["task-a", "task-b"] and time.monotonic() < started + 5:
                await asyncio.sleep(HOLD_WRITES_S / 2)
            assert _pending(path) == ["task-a", "task-b"] and time.monotonic() - started < 1

            await saver.aput_writes(stored, [("items", ["c"])], "task-c")
            assert {t for t, _, _ in (await saver.aget_tuple(stored)).pending_writes} == {"task-a", "task-b",
                                                                                          "task-c"}
            await saver.aput_writes(stored, [("items", ["d"])], "task-d")
            await saver.aput_writes(stored, [(error_channel, "it failed")], "task-e")
            assert _pending(path) == ["task-a", "task-b", "task-c", "task-d", "task-e"]

            for_both = (lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000))  # for SQLite's 1e9 bytes
            for_both(saver.inline)  # the loop's connection, and aiosqlite's (a write the loop could not make)
            await saver._in_thread(for_both)
            other = await saver.aput(_root("u"), empty_checkpoint(), {"source": "input", "step": -1}, {})
            await saver.aput_writes(other, [("items", ["x" * 200_000]), ("n", 2)], "big")
            await saver.aput_writes(stored, [("items", ["f"]), ("n", 2)], "task-f")
            await saver.aput(_root("t"), empty_checkpoint(), {"source": "update", "step": 1}, {})  # thread t goes on
            assert "task-f" in _pending(path) and "big" not in _pending(path)
            with pytest.raises(StorageError, match="a write of thread 'u' before this checkpoint could not be stored"):
                await saver.aput(_root("u"), empty_checkpoint(), {"source": "update", "step": 0}, {})

            await saver.aput_writes(stored, [("items", ["g"])], "task-g")
            assert "task-g" not in _pending(path)
        assert "task-g" in _pending(path)  # committed at close

    asyncio.run(main())


def _carried(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT count(*) FROM checkpoints WHERE parent_writes IS NOT NULL").fetchone()[0]


@pytest.mark.parametrize("key", [None, "a passphrase of the test"], ids=["plaintext", "encrypted"])
def test_a_steps_writes_carried_by_the_next_checkpoints_row_read_back_as_stored(tmp_path, key):
    """On SQLite a step's writes go into the row of the checkpoint after it (savers.sqlite HeldWrites.put_row),
    not rows of their own: every read - get_tuple of each checkpoint, list whole and by pages, the async saver's
    - gives what InMemorySaver gives; copies keep them (sealed again for the copy's thread when encrypted),
    and a lineage copy from a fork point keeps the fork point's writes, which its copy's child does not carry."""
    from savers.options import SaverOptions

    memory = InMemorySaver()
    run(memory, "t", start(6))
    expected = history(memory, "t")

    path, options = tmp_path / "carried.db", SaverOptions(encryption_key=key)
    with savers.open_saver(f"sqlite:///{path}", options=options) as saver:
        run(saver, "t", start(6))
        assert history(saver, "t") == expected
        listed = list(saver.list(config("t")))
        assert [saver.get_tuple(t.config).pending_writes for t in listed] == [t.pending_writes for t in listed]
        assert [t.pending_writes for t in saver.list(config("t"), limit=3)] == [t.pending_writes for t in listed[:3]]
        graph = build().compile(checkpointer=saver)
        at_2 = next(t for t in listed if t.metadata["step"] == 2)
        fork = graph.update_state(at_2.config, {"items": ["fork"]})
        saver.copy_thread("t", "branch", up_to=fork["configurable"]["checkpoint_id"])
        copied_at_2 = saver.get_tuple(config("branch", at_2.checkpoint["id"]))
        assert copied_at_2.pending_writes == at_2.pending_writes != []  # its carrier, step 3, was not copied
        saver.copy_thread("t", "whole")
        assert history(saver, "whole") == history(saver, "t")
    assert _carried(path) >= 6

    async def main():
        async with savers.open_async_saver(f"sqlite:///{tmp_path / 'acarried.db'}", options=options) as saver:
            await build().compile(checkpointer=saver).ainvoke(start(6), config("t"), durability="sync")
            return [(t.metadata.get("step"), t.checkpoint["channel_values"],
                     sorted((c, repr(v)) for _, c, v in t.pending_writes)) async for t in saver.alist(config("t"))]

    assert asyncio.run(main()) == expected
    assert _carried(tmp_path / "acarried.db") >= 6


def test_writes_a_checkpoints_row_cannot_carry_are_stored_as_rows_of_their_own(tmp_path, monkeypatch):
    """The way back to rows of `writes`: a put that stores nothing (another writer's child), a checkpoint put
    again with its id, writes past FOLD_MAX_BYTES, and a row with its writes past SQLite's size limit. None
    is lost, and each read gives them; a run whose checkpoint is deleted leaves its parent's writes."""
    from savers.sqlite import FOLD_MAX_BYTES
    from savers.threads import WriterConflict

    import savers.sqlite

    monkeypatch.setattr(savers.sqlite, "HOLD_WRITES_S", 60)  # nothing but a put or a read commits them
    path = tmp_path / "apart.db"
    with savers.open_saver(f"sqlite:///{path}") as saver:
        first = saver.put(_root("t"), _checkpoint(1, {"n": 1}, "1"), {"source": "input", "step": -1, "run_id": "r1"},
                          {"n": "1"})
        saver.put_writes(first, [("items", ["a"]), ("n", 2)], "task-a")
        second = saver.put(first, _checkpoint(2, {"n": 2}, "2"), {"source": "loop", "step": 0, "run_id": "r2"},
                           {"n": "2"})
        assert _carried(path) == 1 and _pending(path) == ["task-a"]

        saver.put_writes(first, [("items", ["late"]), ("n", 3)], "task-late")
        with pytest.raises(WriterConflict):  # a second "loop" child of `first`
            saver.put(first, _checkpoint(3, {"n": 3}, "3"), {"source": "loop", "step": 0}, {"n": "3"})
        saver.put_writes(first, [("items", ["again"]), ("n", 3)], "task-again")
        saver.put(first, _checkpoint(2, {"n": 5}, "2"), {"source": "loop", "step": 0, "run_id": "r2"}, {"n": "2"})
        saver.put_writes(second, [("items", ["x" * FOLD_MAX_BYTES]), ("n", 3)], "task-big")
        third = saver.put(second, _checkpoint(4, {"n": 4}, "4"), {"source": "loop", "step": 1}, {"n": "4"})
        saver.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 4_500)  # each write fits; a row carrying both does not
        saver.put_writes(third, [("items", ["c" * 2_500]), ("n", 4)], "task-c")
        saver.put_writes(third, [("items", ["d" * 2_500]), ("n", 4)], "task-d")
        saver.put(third, _checkpoint(5, {"n": 5}, "5"), {"source": "loop", "step": 2}, {"n": "5"})
        saver.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000_000_000)
        assert _carried(path) == 1  # only task-a's went into a row: every other write is a row of its own

        def pending(checkpoint):
            return sorted(task for task, _, _ in saver.get_tuple(checkpoint).pending_writes)

        assert pending(first) == ["task-a", "task-a", "task-again", "task-again", "task-late", "task-late"]
        assert pending(second) == ["task-big", "task-big"]
        assert pending(third) == ["task-c", "task-c", "task-d", "task-d"]
        assert saver.get_tuple(second).checkpoint["channel_values"] == {"n": 5}  # put again: upserted as before
        saver.delete_for_runs(["r2"])  # the row carrying task-a's writes goes; they stay with `first`
        assert pending(first) == ["task-a", "task-a", "task-again", "task-again", "task-late", "task-late"]
        assert saver.get_tuple(second) is None


def test_carried_writes_keep_their_checkpoint_and_the_first_value_as_inmemorysaver_does(tmp_path, monkeypatch):
    """Review found, each against InMemorySaver: a checkpoint put again with another parent moved the writes its
    row carried to the new parent (or lost them); a task's write put again for a checkpoint after its child
    carried the first read as the second (INSERT OR IGNORE keeps the first); and deleting the parent's run, then
    the child's, left the carried writes behind as rows of a checkpoint that is gone."""
    import savers.sqlite

    monkeypatch.setattr(savers.sqlite, "HOLD_WRITES_S", 60)

    def scenario(saver):
        first = saver.put(_root("t"), _checkpoint(1, {"n": 1}, "1"), {"source": "input", "step": -1, "run_id": "a"},
                          {"n": "1"})
        other = saver.put(_root("t"), _checkpoint(0, {"n": 0}, "1"), {"source": "update", "step": -1}, {"n": "1"})
        saver.put_writes(first, [("items", ["first"]), ("n", 2)], "task")
        child = saver.put(first, _checkpoint(2, {"n": 2}, "2"), {"source": "loop", "step": 0, "run_id": "b"},
                          {"n": "2"})
        saver.put_writes(first, [("items", ["second"]), ("n", 3)], "task")  # the same keys again: ignored
        seen = [saver.get_tuple(first).pending_writes, [t.pending_writes for t in saver.list(_root("t"))]]
        saver.put(other, _checkpoint(2, {"n": 5}, "2"), {"source": "update", "step": 0}, {"n": "2"})
        seen += [saver.get_tuple(first).pending_writes, saver.get_tuple(other).pending_writes,
                 saver.get_tuple(child).checkpoint["channel_values"]]
        return seen

    expected = scenario(InMemorySaver())
    assert expected[0] == [("task", "items", ["first"]), ("task", "n", 2)]
    with savers.open_saver(f"sqlite:///{tmp_path / 'keys.db'}") as saver:
        assert scenario(saver) == expected
    with savers.open_saver(f"sqlite:///{tmp_path / 'runs.db'}") as saver:
        first = saver.put(_root("t"), _checkpoint(1, {"n": 1}, "1"), {"source": "input", "step": -1, "run_id": "a"},
                          {"n": "1"})
        saver.put_writes(first, [("items", ["x"]), ("n", 2)], "task")
        saver.put(first, _checkpoint(2, {"n": 2}, "2"), {"source": "loop", "step": 0, "run_id": "b"}, {"n": "2"})
        saver.delete_for_runs(["a"])
        saver.delete_for_runs(["b"])
        assert saver.conn.execute("SELECT count(*) FROM writes").fetchone() == (0,)


def test_a_database_a_newer_version_migrated_is_refused_with_one_clear_error(db_url):
    """A newer version may store what this one does not read (as this one carries a step's writes in its
    checkpoint's row, which the one before would read as no writes): opening it is an error, not missing data."""
    from savers.errors import StorageError
    from savers.migrations import POSTGRES, SQLITE

    with savers.open_saver(db_url) as saver:
        run(saver, "t", start(2))
    newer = len(SQLITE if db_url.startswith("sqlite") else POSTGRES) + 3
    if db_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as conn, conn:
            conn.execute("INSERT INTO agent_migrations (v) VALUES (?)", (newer,))
    else:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO agent_migrations (v) VALUES (%s)", (newer,))
    with pytest.raises(StorageError, match=rf"written by a newer version of agent \(schema {newer}, this version"):
        with savers.open_saver(db_url):
            pass

    async def main():
        async with savers.open_async_saver(db_url):
            pass

    with pytest.raises(StorageError, match="newer version"):
        asyncio.run(main())


def test_a_held_write_sqlite_refuses_for_good_fails_its_own_thread_only(tmp_path):
    """Review found: one held row SQLite refuses for good (past its size limit) was kept for the next commit,
    so every later put, read and delete of every thread failed."""
    from savers.errors import StorageError

    path = tmp_path / "big.db"
    with savers.open_saver(f"sqlite:///{path}") as saver:
        saver.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000)  # stands for SQLite's 1e9 bytes
        stored = {t: saver.put(_root(t), _checkpoint(1, {"n": 1}, "1"), {"source": "input", "step": -1}, {"n": "1"})
                  for t in ("a", "b")}
        saver.put_writes(stored["a"], [("items", ["x" * 200_000]), ("n", 2)], "big")
        saver.put_writes(stored["b"], [("items", ["small"]), ("n", 2)], "small")
        saver.put(stored["b"], _checkpoint(2, {"n": 2}, "2"), {"source": "loop", "step": 0}, {"n": "2"})
        assert _pending(path) == ["small"]  # thread b went on, its write stored
        with pytest.raises(StorageError, match="a write of thread 'a' before this checkpoint could not be stored"):
            saver.put(stored["a"], _checkpoint(2, {"n": 2}, "2"), {"source": "loop", "step": 0}, {"n": "2"})
        assert saver.get_tuple(_root("b")).checkpoint["channel_values"] == {"n": 2}


def test_closing_over_a_locked_database_stops_everything_and_says_so(tmp_path, caplog):
    """Review found: a held write that could not be committed at close (another process holding the write
    lock past the busy timeout) made close fail before the WAL copier and the connection were closed. And
    (a later review) the saver's thread tried that commit too as it stopped: close waited twice as long."""
    from savers.errors import StorageError

    path = tmp_path / "locked.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    with pytest.raises(StorageError, match="database is locked"):
        with savers.open_saver(f"sqlite:///{path}") as saver:
            saver.conn.execute("PRAGMA busy_timeout=200")
            stored = saver.put(_root("t"), empty_checkpoint(), {"source": "input", "step": -1}, {})
            other.execute("BEGIN IMMEDIATE")  # another process's long write
            saver.put_writes(stored, [("items", ["a"])], "task-a")
    other.execute("ROLLBACK")
    assert not [t.name for t in threading.enumerate() if t.name.startswith("agent-")]
    assert [r.message for r in caplog.records if "could not be stored" in r.message] == [
        "1 held writes could not be stored: database is locked"]  # tried once, waiting once
    with pytest.raises(sqlite3.ProgrammingError):
        saver.conn.execute("SELECT 1")


def test_a_write_put_while_the_saver_closes_is_committed_at_once(tmp_path):
    """Review found: a put_writes from another thread after the held writes were closed, before the
    connection was, returned and was never committed."""
    path = tmp_path / "closing.db"
    with savers.open_saver(f"sqlite:///{path}") as saver:
        stored = saver.put(_root("t"), empty_checkpoint(), {"source": "input", "step": -1}, {})
        saver.held.close()  # as open_sqlite's close does first
        saver.put_writes(stored, [("items", ["late"])], "task-late")
        assert _pending(path) == ["task-late"]


CLOSING_UNDER_WRITERS = """
import contextlib, random, sqlite3, sys, tempfile, threading, time
sys.path[:0] = [{root!r}]
from langgraph.checkpoint.base import empty_checkpoint
import savers
lost = 0
for rep in range({reps}):
    path = f"{{tempfile.mkdtemp()}}/r.db"
    returned, stop = [], threading.Event()
    with savers.open_saver(f"sqlite:///{{path}}") as saver:
        root = {{"configurable": {{"thread_id": "t", "checkpoint_ns": ""}}}}
        stored = saver.put(root, empty_checkpoint(), {{"source": "input", "step": -1}}, {{}})
        def writer(k):
            n = 0
            while not stop.is_set():
                try:
                    saver.put_writes(stored, [("items", [n])], f"w{{k}}-{{n}}")
                except Exception:
                    return  # the saver closed: this one did not return
                returned.append(f"w{{k}}-{{n}}")
                n += 1
                if n % 7 == 0:
                    time.sleep(random.random() * 0.012)
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(random.random() * 0.05)
    time.sleep(0.01)  # closed with the writers still writing
    stop.set()
    for t in threads:
        t.join()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        stored_ids = {{r[0] for r in conn.execute("SELECT task_id FROM writes")}}
    lost += len([r for r in returned if r not in stored_ids])
print("lost", lost)
"""


def test_closing_the_saver_while_other_threads_write_neither_crashes_nor_loses_a_write(tmp_path):
    """Review found: open_sqlite closed its connection without the saver's lock while a put_writes of another
    thread still ran on it - the process crashed (SIGSEGV, 3 runs of 3). A write that returned is stored; one
    that comes after the close raises."""
    code = CLOSING_UNDER_WRITERS.format(root=str(Path(__file__).parent.parent), reps=30)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "lost 0\n"), done.stderr[-2000:]


CLOSED_BY_EXIT = """
import sqlite3, sys
sys.path[:0] = [{root!r}]
from langgraph.checkpoint.base import empty_checkpoint
import savers.sqlite
from savers.sqlite import Sqlite
savers.sqlite.HOLD_WRITES_S = 60  # nothing but the end of the process commits the write
saver = Sqlite(sqlite3.connect({path!r}, check_same_thread=False))
root = {{"configurable": {{"thread_id": "t", "checkpoint_ns": ""}}}}
stored = saver.put(root, empty_checkpoint(), {{"source": "input", "step": -1}}, {{}})
saver.put_writes(stored, [("items", ["a"])], "task-a")
"""


ASYNC_CLOSED_BY_EXIT = """
import asyncio, sys
sys.path[:0] = [{root!r}]
from langgraph.checkpoint.base import empty_checkpoint
import savers, savers.sqlite
savers.sqlite.HOLD_WRITES_S = 60  # nothing but the end of the process commits the write
async def main():
    opened = savers.open_async_saver("sqlite:///{path}")
    saver = await opened.__aenter__()  # never left
    root = {{"configurable": {{"thread_id": "t", "checkpoint_ns": ""}}}}
    stored = await saver.aput(root, empty_checkpoint(), {{"source": "input", "step": -1}}, {{}})
    await saver.aput_writes(stored, [("items", ["a"])], "task-a")
    await saver.conn.close()  # (aiosqlite's thread would keep the process alive)
    return opened
keep = asyncio.new_event_loop().run_until_complete(main())  # a loop never closed: open_async_saver's own
"""                                                          # close, at the loop's shutdown, never runs


@pytest.mark.parametrize("code", [CLOSED_BY_EXIT, ASYNC_CLOSED_BY_EXIT], ids=["sync", "async"])
def test_a_held_write_is_committed_when_the_process_ends_without_closing_the_saver(tmp_path, code):
    path = tmp_path / "exit.db"
    code = code.format(root=str(Path(__file__).parent.parent), path=str(path))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert _pending(path) == ["task-a"]


def test_async_sqlite_writes_on_the_loop_wait_for_a_lock_off_it(tmp_path):
    """aput runs on the event loop's thread with a connection that does not wait for locks: while another
    process holds the database's write lock, the put - and the step's writes held for it, which the saver's
    thread could not commit either - goes to aiosqlite's thread and waits there, the loop going on
    meanwhile, and is stored once the lock is let go."""
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    cfg = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}

    async def main():
        async with savers.open_async_saver(url) as saver:
            stored = await saver.aput(cfg, empty_checkpoint(), {"source": "input", "step": -1}, {})
            inline = saver._inline_commits
            holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            await saver.aput_writes(stored, [("items", ["held"])], "task-1")  # held: returns at once
            put = asyncio.create_task(saver.aput(stored, empty_checkpoint(), {"source": "loop", "step": 0}, {}))
            for _ in range(20):  # the loop is free while the put waits for the lock
                await asyncio.sleep(0.01)
            assert not put.done() and "task-1" not in _pending(tmp_path / "locked.db")  # nor did the saver's thread
            holder.execute("COMMIT")
            holder.close()
            await asyncio.wait_for(put, 10)
            tup = await saver.aget_tuple(stored)
            await saver.aput(cfg, empty_checkpoint(), {"source": "update", "step": 1}, {})
            return inline, saver._inline_commits, tup.pending_writes

    before, after, pending = asyncio.run(main())
    assert pending == [("task-1", "items", ["held"])]
    assert (before, after) == (1, 2)  # the first and last puts went on the loop's connection; the waiting one not


WAL_COMMITS = 8  # x INLINE_CHECKPOINT_COMMITS: without the copies the WAL would reach 8x its size after one


def _check_wal_copied(wal: list[int], copies: int, pending: list, commits: int) -> None:
    """The WAL, sampled every 100 commits of ~1 KB writes, started over after each copy (it reaches what it
    held at the copy plus what was written while the copy ran: about as many commits again when nothing else
    runs between them); every write is stored."""
    from savers.sqlite import INLINE_CHECKPOINT_COMMITS

    assert sorted(int(task_id[5:]) for task_id, _, _ in pending) == list(range(1, commits + 1))
    per_commit = wal[0] / 100
    assert copies >= 2 and max(wal) < 3 * per_commit * INLINE_CHECKPOINT_COMMITS, (copies, per_commit, max(wal))


def test_sync_sqlite_copies_its_wal_back_on_a_thread_of_its_own(tmp_path):
    """The sync saver's connection does not copy the WAL back inside a commit (the copy takes about as long as
    the 1,000 commits before it); the saver's WalCopier thread does, beside the writes, then again under the
    saver's lock, so a WAL written without pause starts over after each copy instead of growing without bound."""
    from savers.sqlite import INLINE_AUTOCHECKPOINT_PAGES, INLINE_CHECKPOINT_COMMITS

    path = tmp_path / "wal.db"
    cfg = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    commits = WAL_COMMITS * INLINE_CHECKPOINT_COMMITS
    with savers.open_saver(f"sqlite:///{path}") as saver:
        assert saver.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (INLINE_AUTOCHECKPOINT_PAGES,)
        stored = saver.put(cfg, empty_checkpoint(), {"source": "input", "step": -1}, {})
        wal = []
        for n in range(1, commits + 1):  # a step: its writes, then its checkpoint (one commit, HeldWrites)
            saver.put_writes(stored, [("items", [f"item {n} " + "x" * 1000])], f"task-{n}")
            saver.put(cfg, empty_checkpoint(), {"source": "update", "step": n}, {})
            if n % 100 == 0:
                wal.append((path.parent / "wal.db-wal").stat().st_size)
        copier = saver.copier
        copies = copier.copies
        pending = saver.get_tuple(stored).pending_writes
    assert saver.copier is None and not copier._thread.is_alive()  # closed with the saver
    _check_wal_copied(wal, copies, pending, commits)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the copier finds its descriptor in /proc (Linux)")
def test_wal_copier_flushes_the_database_file_before_its_copy_under_the_lock(tmp_path, monkeypatch):
    """The copier's last copy holds the saver's writes off; the database file's pages the earlier copies wrote
    are flushed to disk before it, beside the writes, through a descriptor the process has open on it (so that
    last copy flushes only its own few pages)."""
    import os

    import savers.sqlite as sqlite_saver

    path = tmp_path / "flush.db"
    events = []
    real_copy, real_sync = sqlite_saver._copy_wal_back, os.fdatasync
    with savers.open_saver(f"sqlite:///{path}") as saver:
        copier = saver.copier
        cfg = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        for n in range(200):
            saver.put(cfg, empty_checkpoint(), {"source": "update", "step": n}, {})
        monkeypatch.setattr(sqlite_saver, "_copy_wal_back",
                            lambda conn: (events.append(("copy", saver.lock.locked())), real_copy(conn)))
        monkeypatch.setattr(os, "fdatasync", lambda fd: (events.append(("flush", fd, saver.lock.locked())),
                                                         real_sync(fd)))
        copies = copier.copies
        copier._wanted.set()  # as after INLINE_CHECKPOINT_COMMITS commits; nothing else writes meanwhile
        deadline = time.monotonic() + 10
        while copier.copies == copies and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.readlink(f"/proc/self/fd/{copier.fd}") == str(path.resolve())
    assert events[-1] == ("copy", True)  # the last copy, under the lock
    assert events[-2] == ("flush", copier.fd, False)  # right before it, without the lock
    assert ("copy", False) in events[:-2]

def test_async_sqlite_copies_its_wal_back_though_its_writes_do_not(tmp_path):
    """The loop's connection does not copy the WAL back after its commits either; the saver's WalCopier thread
    does, the loop going on meanwhile. While the copier's second copy holds its lock, a write goes to
    aiosqlite's thread and waits there, so the WAL starts over after each copy as with the sync saver."""
    from savers.sqlite import INLINE_CHECKPOINT_COMMITS

    path = tmp_path / "wal.db"
    cfg = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    commits = WAL_COMMITS * INLINE_CHECKPOINT_COMMITS

    async def main():
        async with savers.open_async_saver(f"sqlite:///{path}") as saver:
            stored = await saver.aput(cfg, empty_checkpoint(), {"source": "input", "step": -1}, {})
            wal = []
            for n in range(1, commits + 1):  # a step: its writes (held), then its checkpoint, in one commit
                await saver.aput_writes(stored, [("items", [f"item {n} " + "x" * 1000])], f"task-{n}")
                await saver.aput(cfg, empty_checkpoint(), {"source": "update", "step": n}, {})
                if n % 100 == 0:
                    wal.append((path.parent / "wal.db-wal").stat().st_size)
            copier = saver.copier
            pending = (await saver.aget_tuple(stored)).pending_writes
            return saver._inline_commits, copier, wal, pending

    inline, copier, wal, pending = asyncio.run(main())
    assert not copier._thread.is_alive()
    assert inline > 0.9 * commits  # all but the few made while a second copy ran went on the loop's connection
    _check_wal_copied(wal, copier.copies, pending, commits)


WAL_WRITER = """
import sys, time
sys.path[:0] = [{root!r}]
import savers
from langgraph.checkpoint.base import empty_checkpoint
cfg = {{"configurable": {{"thread_id": {thread!r}, "checkpoint_ns": ""}}}}
def write(saver):
    stored = saver.put(cfg, empty_checkpoint(), {{"source": "input", "step": -1}}, {{}})
    print("ready", flush=True)
    sys.stdin.readline()
    for n in range({commits}):
        saver.put_writes(stored, [("items", [f"item {{n}} " + "x" * 1000])], f"task-{{n}}")
        time.sleep(0.0002)  # a step's own work between its commits
"""
SYNC_WAL_WRITER = WAL_WRITER + """
with savers.open_saver({url!r}) as saver:
    write(saver)
"""
ASYNC_WAL_WRITER = WAL_WRITER + """
import asyncio
async def main():
    async with savers.open_async_saver({url!r}) as saver:
        await asyncio.to_thread(write, saver)  # the sync wrappers, run off the loop: writes on the inline connection
asyncio.run(main())
"""


@pytest.mark.parametrize("writer", [SYNC_WAL_WRITER, ASYNC_WAL_WRITER], ids=["sync", "async"])
def test_sqlite_wal_starts_over_while_two_processes_write(tmp_path, writer):
    """A saver's WalCopier holds off its own process's writes for its last copy, not another's: with two
    processes writing at once, its copies rarely left the WAL all copied, so it never started over (the
    copier alone: 320 MB after 2 x 12,000 commits, and on without bound). Past INLINE_AUTOCHECKPOINT_PAGES
    the saver's commits copy it back themselves, as SQLite's autocheckpoint does, and it starts over."""
    from savers.sqlite import INLINE_AUTOCHECKPOINT_PAGES

    path = tmp_path / "shared.db"
    with savers.open_saver(f"sqlite:///{path}"):
        pass
    writers = [subprocess.Popen([sys.executable, "-c", writer.format(
        root=str(Path(__file__).parent.parent), url=f"sqlite:///{path}", thread=f"t{i}", commits=8_000)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(2)]
    try:
        for w in writers:
            assert w.stdout.readline() == "ready\n"
        for w in writers:  # both at once
            w.stdin.write("go\n")
            w.stdin.flush()
        wal, peak = path.parent / "shared.db-wal", 0
        while any(w.poll() is None for w in writers):
            with contextlib.suppress(FileNotFoundError):
                peak = max(peak, wal.stat().st_size)
            time.sleep(0.01)
    finally:
        for w in writers:
            w.kill()
            w.wait()
    assert [w.returncode for w in writers] == [0, 0]
    with savers.open_saver(f"sqlite:///{path}") as saver:
        for i in range(2):
            head = saver.get_tuple({"configurable": {"thread_id": f"t{i}", "checkpoint_ns": ""}})
            assert len(head.pending_writes) == 8_000
    assert peak < 2 * INLINE_AUTOCHECKPOINT_PAGES * 4096, peak


@pytest.fixture
def pg_url(request, tmp_path) -> str:
    return fresh_db_url("postgres", request, tmp_path)


def _held_writes_table(url: str) -> psycopg.Connection:
    """Another session holding checkpoint_writes: any INSERT into it waits in the database until released."""
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE checkpoint_writes IN EXCLUSIVE MODE")
    return blocker


def test_on_postgres_a_checkpoint_does_not_wait_behind_its_steps_writes(pg_url):
    """LangGraph hands a task's writes and then the step's checkpoint to its background threads and waits
    only for the checkpoint; the two go to the database on connections of their own (savers/postgres.py
    _lanes), so a slow put_writes does not hold up the step."""
    with savers.open_saver(pg_url) as saver:
        run(saver, "t", start(3))
        head = saver.get_tuple(config("t"))
        blocker = _held_writes_table(pg_url)
        writes = threading.Thread(target=saver.put_writes, args=(head.config, [("items", ["w"])], "task-1"))
        next_checkpoint = {**head.checkpoint, "id": later_id(head.checkpoint["id"])}
        stored = []
        put = threading.Thread(target=lambda: stored.append(saver.put(
            head.config, next_checkpoint, {"source": "loop", "step": 4, "parents": {}}, {})))
        try:
            writes.start()
            time.sleep(0.2)
            put.start()
            put.join(timeout=10)
            assert stored and writes.is_alive()  # the checkpoint was stored while the writes still wait
        finally:
            blocker.rollback()
            blocker.close()
            writes.join(timeout=30)
            put.join(timeout=30)
        assert not writes.is_alive()
        assert saver.get_tuple(stored[0]).checkpoint["id"] == next_checkpoint["id"]
        assert [w[1:] for w in saver.get_tuple(head.config).pending_writes] == [("items", ["w"])]


def test_on_postgres_an_async_checkpoint_does_not_wait_behind_its_steps_writes(pg_url):
    async def main():
        async with savers.open_async_saver(pg_url) as saver:
            await build().compile(checkpointer=saver).ainvoke(start(3), config("t"), durability="sync")
            head = await saver.aget_tuple(config("t"))
            blocker = _held_writes_table(pg_url)
            writes = asyncio.create_task(saver.aput_writes(head.config, [("items", ["w"])], "task-1"))
            try:
                await asyncio.sleep(0.2)
                next_checkpoint = {**head.checkpoint, "id": later_id(head.checkpoint["id"])}
                stored = await asyncio.wait_for(
                    saver.aput(head.config, next_checkpoint, {"source": "loop", "step": 4, "parents": {}}, {}), 30)
                assert not writes.done()
            finally:
                blocker.rollback()
                blocker.close()
            await asyncio.wait_for(writes, 30)
            assert (await saver.aget_tuple(stored)).checkpoint["id"] == next_checkpoint["id"]
            assert [w[1:] for w in (await saver.aget_tuple(head.config)).pending_writes] == [("items", ["w"])]

    asyncio.run(main())


def test_on_postgres_a_pool_of_two_runs_with_one_connection_for_the_saver(pg_url):
    """Two is the smallest pool: the saver keeps one connection, the reply cache and the thread lease share
    the other (a second saver lane there would leave them none, and the run would wait for a connection)."""
    from agent import Agent

    with Agent(db=pg_url, model="offline", pg_pool_size=2) as agent:
        assert agent.reason("What is 17*23+4?", thread="t").answer == "395"
        assert agent.reason("What is 2+3?", thread="u").answer == "5"


def _hot_statements(saver) -> list[str]:
    """The names of the statements savers.pgexec prepared on the saver's own connection."""
    with saver._cursor() as cur:
        return [row["name"] for row in cur.execute("SELECT name FROM pg_prepared_statements "
                                                   "WHERE name LIKE 'agent_hot_%%' ORDER BY name")]


@pytest.mark.parametrize("prepare", [0, None])
def test_on_postgres_put_and_put_writes_go_through_libpq_prepared_unless_turned_off(pg_url, prepare):
    """The hot path runs through savers.pgexec: prepared statements of its own on the saver's connection, none
    when they are off (pgbouncer in transaction mode), and what it stores reads back the same either way."""
    from savers.options import SaverOptions

    with savers.open_saver(pg_url, options=SaverOptions(prepare_threshold=prepare)) as saver:
        reference = InMemorySaver()
        for checkpointer in (saver, reference):
            run(checkpointer, "t", start(4))
            run(checkpointer, "t", {"target": 6})
        assert history(saver, "t") == history(reference, "t") and len(history(reference, "t")) == 10
        hot = _hot_statements(saver)
        assert (hot != []) == (prepare is not None), hot


def test_on_postgres_an_async_write_cancelled_midway_leaves_the_saver_working(pg_url):
    """A service cancelling a run mid-write (its task cancelled while aput_writes waits on the database): the
    saver goes on - the next calls do not meet a connection still busy with the cancelled statement."""
    async def main():
        async with savers.open_async_saver(pg_url) as saver:
            await build().compile(checkpointer=saver).ainvoke(start(2), config("t"), durability="sync")
            head = await saver.aget_tuple(config("t"))
            blocker = _held_writes_table(pg_url)
            try:
                writes = asyncio.create_task(saver.aput_writes(head.config, [("items", ["w"])], "task-1"))
                await asyncio.sleep(0.3)
                writes.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await writes
            finally:
                blocker.rollback()
                blocker.close()
            await saver.aput_writes(head.config, [("items", ["v"])], "task-2")
            await build().compile(checkpointer=saver).ainvoke(start(3), config("u"), durability="sync")
            return (await saver.aget_tuple(head.config)).pending_writes, await saver.aget_tuple(config("u"))

    pending, other = asyncio.run(main())
    assert ("task-2", "items", ["v"]) in pending and other.checkpoint["channel_values"]["step"] == 3


def test_on_postgres_a_session_reset_under_the_saver_loses_no_write(pg_url):
    """A pooler resetting the session (DISCARD ALL) drops the prepared statements: prepared again, nothing
    lost."""
    with savers.open_saver(pg_url) as saver:
        run(saver, "t", start(2))
        assert _hot_statements(saver)
        with saver._cursor() as cur:
            cur.execute("DISCARD ALL")
        with saver._cursor(lane="writes") as cur:
            cur.execute("DISCARD ALL")
        run(saver, "u", start(3))
        assert saver.get_tuple(config("u")).checkpoint["channel_values"]["step"] == 3
        assert len(saver.get_tuple(config("u")).checkpoint["channel_values"]["items"]) == 3
        assert _hot_statements(saver)


def test_on_postgres_a_thread_id_holding_nul_is_refused_not_cut_short(pg_url):
    """libpq sends text as C strings: a NUL would end the id early, and the checkpoint would be stored under
    another thread. Such text goes through psycopg, which refuses it."""
    with savers.open_saver(pg_url) as saver:
        with pytest.raises(psycopg.DataError):
            saver.put(config("a\x00b", checkpoint_ns=""), empty_checkpoint(), {"source": "input", "step": -1, "parents": {}}, {})
        with pytest.raises(psycopg.DataError):
            saver.put_writes(config("a\x00b", "1f0", checkpoint_ns=""), [("items", ["x"]), ("step", 1)], "task")
        assert saver.get_tuple(config("a")) is None and list(saver.list(None)) == []


def later_id(checkpoint_id: str) -> str:
    """A checkpoint id after this one, as LangGraph would make the next (uuid6 ids sort by time)."""
    from langgraph.checkpoint.base.id import uuid6

    new = str(uuid6(clock_seq=1))
    assert new > checkpoint_id
    return new


def write_rows(url: str, thread: str, task_id: str) -> int:
    """How many rows of the writes table hold this task's writes."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute("SELECT COUNT(*) FROM writes WHERE thread_id = ? AND task_id = ?",
                                (thread, task_id)).fetchone()[0]
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT COUNT(*) FROM checkpoint_writes WHERE thread_id = %s AND task_id = %s",
                            (thread, task_id)).fetchone()[0]


def test_a_tasks_writes_are_one_row_and_read_back_as_written(db_url):
    """savers.compact.PACKED: a task's writes in one row; a single write, special channels and the null task's
    writes (which LangGraph sends again with new ones appended) a row each. Read back, they are what
    InMemorySaver gives for the same calls."""
    null_task = "00000000-0000-0000-0000-000000000000"
    calls = [
        ([("items", ["a", "b"]), ("step", 1), ("note", NOTE)], "task-1"),
        ([("step", 2)], "task-2"),
        ([("__error__", "ValueError('boom')"), ("step", 3)], "task-3"),
        ([("items", ["x"]), ("step", 4)], null_task),
        ([("items", ["x"]), ("step", 4), ("note", "appended")], null_task),
        ([("items", ["other"]), ("step", 5)], "task-1"),  # the task's writes were saved: nothing more
        ([("__resume__", "first"), ("__resume__", "second")], "task-4"),  # the last wins (Postgres refused it)
    ]
    reference = InMemorySaver()
    with savers.open_saver(db_url) as saver:
        run(saver, "t", start(2))
        head = saver.get_tuple(config("t"))
        reference.put(head.parent_config or config("t"), head.checkpoint, head.metadata, {})
        for writes, task_id in calls:
            saver.put_writes(head.config, writes, task_id)
            reference.put_writes(head.config, writes, task_id)
        expected = reference.get_tuple(head.config).pending_writes
        assert saver.get_tuple(head.config).pending_writes == expected
        assert [w for t in saver.list(config("t"), limit=1) for w in t.pending_writes] == expected
    assert len(expected) == 10 and ("task-4", "__resume__", "second") in expected
    assert [write_rows(db_url, "t", task) for task in ("task-1", "task-2", "task-3", null_task, "task-4")] == [1, 1, 2, 3, 1]


def test_metadata_of_a_callers_own_named_like_the_sealed_keys_reads_back(db_url):
    """With encryption on, metadata keys are sealed into one key, "sealed"; without it, a caller's own key of
    that name holding a ':' was taken for sealed keys, and the checkpoint (and the list of its thread) could
    not be read."""
    metadata = {"source": "input", "step": -1, "sealed": "note: approved", "by": "ops"}
    with savers.open_saver(db_url) as saver:
        stored = saver.put(config("t", checkpoint_ns=""), empty_checkpoint(), metadata, {})
        assert saver.get_tuple(stored).metadata == metadata
        assert [t.metadata for t in saver.list(config("t"), filter={"sealed": "note: approved"})] == [metadata]
        assert list(saver.list(config("t"), filter={"sealed": "note"})) == []


# -- small ----------------------------------------------------------------------------------------------------


def stored_bytes(url: str) -> int:
    """Bytes of every value the saver stored (all columns, all rows), without page or index overhead."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            return sum(conn.execute(f"SELECT COALESCE(SUM({' + '.join(f'COALESCE(LENGTH({c}), 0)' for c in cols)}), 0) "
                                    f"FROM {table}").fetchone()[0]
                       for table, cols in _columns(conn).items())
    with psycopg.connect(url) as conn:
        return sum(conn.execute(f"SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM {t} t").fetchone()[0]
                   for t in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"))


def _columns(conn) -> dict[str, list[str]]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
              if r[0] in ("checkpoints", "writes", "agent_blobs")]
    return {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}


def test_storage_per_checkpoint_stays_flat_as_a_thread_grows(db_url):
    per_checkpoint = {}
    with savers.open_saver(db_url) as saver:
        for steps in (30, 150):
            before = stored_bytes(db_url)
            run(saver, f"t{steps}", start(steps))
            per_checkpoint[steps] = (stored_bytes(db_url) - before) / (steps + 1)
        final_items = saver.get_tuple(config("t150")).checkpoint["channel_values"]["items"]
    assert per_checkpoint[150] < 1.25 * per_checkpoint[30]
    # Each checkpoint costs less than the list it holds: the list is not stored again at every step.
    assert per_checkpoint[150] < len(ormsgpack.packb(final_items))


# -- threads written by the official savers ---------------------------------------------------------------------


@pytest.fixture
def stock_saver(db_url):
    if db_url.startswith("sqlite"):
        from langgraph.checkpoint.sqlite import SqliteSaver

        with SqliteSaver.from_conn_string(db_url.removeprefix("sqlite:///")) as saver:
            saver.setup()
            yield saver
    else:
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(db_url) as saver:
            saver.setup()
            yield saver


def test_threads_written_by_the_official_savers_read_and_continue(db_url, stock_saver):
    run(stock_saver, "old", start(12))
    expected = history(stock_saver, "old")
    with savers.open_saver(db_url) as saver:
        assert history(saver, "old") == expected
        run(saver, "old", {"target": 20})
        assert saver.get_tuple(config("old")).checkpoint["channel_values"]["items"][-1].startswith("item 20:")
        assert history(saver, "old")[-len(expected):] == expected
        saver.copy_thread("old", "copy", up_to=ids(saver, "old")[0])
        saver.prune(["old"], strategy="keep_latest")
        assert saver.get_tuple(config("old")).checkpoint == saver.get_tuple(config("copy")).checkpoint


def test_a_value_whose_row_is_gone_is_a_clear_error(db_url):
    """As when another process deletes a thread's first checkpoints while a run still refers to them."""
    with savers.open_saver(db_url) as saver:
        run(saver, "t", start(20))
        first = ids(saver, "t")[-5:]
    table = "checkpoints"
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            conn.execute(f"DELETE FROM {table} WHERE checkpoint_id IN ({', '.join('?' * len(first))})", first)
            conn.execute("DELETE FROM agent_blobs")
    else:
        with psycopg.connect(db_url) as conn:
            conn.execute("DELETE FROM checkpoint_blobs WHERE base IS NULL")
    with savers.open_saver(db_url) as saver:
        with pytest.raises(savers.StorageError, match=r"checkpoint \S+ of thread 't' cannot be read: the (stored )?"
                                                      r"value of '\w+' (stored with|extends)"):
            saver.get_tuple(config("t"))


def _everything_reads(saver, thread: str) -> int:
    listed = list(saver.list({"configurable": {"thread_id": thread}}))
    assert [saver.get_tuple(t.config).checkpoint for t in listed] == [t.checkpoint for t in listed]
    return len(listed)


def test_a_saver_goes_on_after_another_process_prunes_or_deletes_its_thread(db_url):
    """A saver remembers where each thread's lists are stored, to store the next as a delta. Another process
    (here another saver on the same database) pruned the thread - its head rewritten whole under the same
    id, the rows before it gone - and the next run in this one stored deltas of rows that were gone: every
    checkpoint it wrote failed to read. Or it deleted the thread, and a checkpoint with no parent (an
    import's first, a run on a new thread) extended the deleted thread's list. Now a read of a checkpoint
    keeps what it remembers only where the rows were just read, and a thread with nothing stored starts
    anew."""
    with savers.open_saver(db_url) as this, savers.open_saver(db_url) as other:
        run(this, "t", start(30))
        other.prune(["t"], strategy="keep_latest")
        run(this, "t", {"target": 45})
        assert _everything_reads(other, "t") == 18 and this.get_tuple(config("t")).checkpoint["channel_values"][
            "items"][-1].startswith("item 45:")

        run(this, "u", start(20))
        items = this.get_tuple(config("u")).checkpoint["channel_values"]["items"]
        other.delete_thread("u")
        this.put(config("u", checkpoint_ns=""), {**empty_checkpoint(), "channel_values": {"items": [*items, "more"]},
                                                   "channel_versions": {"items": "1"}},
                 {"source": "input", "step": -1}, {"items": "1"})
        assert _everything_reads(other, "u") == 1


def test_delta_chains_stay_short_however_many_runs_extend_a_list(tmp_path):
    """Each run starts its chain of list deltas on the value it read; without a bound the chain - and the
    lookups to read the head - grows with the number of runs (123 statements here), not just log(steps)."""
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.base.id import uuid6

    from savers.compact import MAX_SEED_DEPTH

    with savers.open_saver(f"sqlite:///{tmp_path / 'agent.db'}") as saver:
        items, parent = [], None
        for run in range(60):
            saver.chains.forget(None)  # a new process: it knows only what it reads
            if parent:
                saver.get_tuple(config("t", parent))
            for step in range(3):
                items = items + [f"result {run}.{step} " + "x" * 40]
                checkpoint = {**empty_checkpoint(), "id": str(uuid6()), "channel_values": {"results": list(items)},
                              "channel_versions": {"results": f"{len(items):032}.0.5"}}
                saver.put(config("t", parent, checkpoint_ns=""), checkpoint, {"source": "loop" if parent else "input", "step": run},
                          {"results": checkpoint["channel_versions"]["results"]})
                parent = checkpoint["id"]
        statements = []
        saver.conn.set_trace_callback(statements.append)
        saver.chains.forget(None)
        head = saver.get_tuple(config("t"))
        saver.conn.set_trace_callback(None)
    assert head.checkpoint["channel_values"]["results"] == items
    assert len(statements) <= MAX_SEED_DEPTH + 4, len(statements)


def test_processes_opening_a_fresh_sqlite_file_at_once_all_succeed(tmp_path):
    """Each takes SQLite's write lock to migrate, and the later ones find the work done (without it, two
    inserted the same agent_migrations version and one open failed)."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    import time

    start = time.time() + 3  # every process imported and waiting, then all open at the same instant
    code = (f"import time, savers, savers.sqlite\ntime.sleep(max(0, {start} - time.time()))\n"
            f"with savers.open_saver({url!r}):\n    pass\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(8)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errors
    with sqlite3.connect(tmp_path / "fresh.db") as conn:
        versions = [v for (v,) in conn.execute("SELECT v FROM agent_migrations ORDER BY v")]
    from savers.migrations import SQLITE

    assert versions == list(range(len(SQLITE)))
