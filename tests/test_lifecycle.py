"""Backing up, moving and removing threads: export/import round trips across backends, hostile files that
change nothing, migrate, delete."""

import contextlib
import dataclasses
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from agent import Agent, BadInput, ThreadExists

QUESTION = "What is 2*3+4*5-6?"


def seed(agent: Agent) -> None:
    """Two threads with branches, an edit that has not run yet, and a paused (interrupted) branch."""
    agent.reason(QUESTION, thread="t1")
    rows = agent.history("t1")
    agent.replay("t1", rows[2].checkpoint_id)
    agent.fork("t1", rows[3].checkpoint_id, {"plan.2": "Multiply 5 by 4"})
    agent.reason("What is 6*7?", thread="t2")
    agent.fork("t2", agent.history("t2")[-1].checkpoint_id, {"question": "What is 6*8?"}, run=False)


def record(agent: Agent, thread: str) -> list[tuple]:
    """Everything a user can see of a thread, checkpoint by checkpoint."""
    rows = []
    for row in agent.history(thread):
        view = agent.state(thread, row.checkpoint_id)
        rows.append((row.checkpoint_id, row.parent_checkpoint_id, row.step, row.node, row.source, tuple(row.next),
                     row.summary, row.edit, json.dumps(view.values, sort_keys=True), view.result.status))
    return rows


def move(source: Agent, target: Agent, path) -> None:
    with path.open("w") as f:
        source.export(f)
    target.import_file(path)


def test_round_trip_sqlite_postgres_sqlite_is_lossless(tmp_path, request):
    from conftest import fresh_db_url

    second = fresh_db_url("postgres", request, tmp_path)
    first, third = f"sqlite:///{tmp_path / 'first.db'}", f"sqlite:///{tmp_path / 'third.db'}"
    with Agent(db=first) as a, Agent(db=second) as b, Agent(db=third) as c:
        seed(a)
        move(a, b, tmp_path / "from-sqlite.jsonl")
        move(b, c, tmp_path / "from-postgres.jsonl")
        for thread in ("t1", "t2"):
            original = record(a, thread)
            assert record(b, thread) == original
            assert record(c, thread) == original
        assert c.result("t2").status == "interrupted"
        assert c.resume("t2").answer == "48"  # the imported edit runs on exactly as the original would
        assert a.resume("t2").answer == "48"


def test_migrate_on_the_command_line(cli, db_url, tmp_path):
    source = f"sqlite:///{tmp_path / 'source.db'}"
    with Agent(db=source) as agent:
        seed(agent)
        expected = {t: record(agent, t) for t in ("t1", "t2")}
    result = cli("migrate", "--from", source, "--to", db_url, "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)["threads"]) == ["t1", "t2"]
    with Agent(db=db_url) as agent:
        assert {t: record(agent, t) for t in ("t1", "t2")} == expected
    again = cli("migrate", "--from", source, "--to", db_url)
    assert again.returncode == 2 and "threads 't1', 't2' already exist in the target database" in again.stderr


def test_migrate_export_and_import_of_what_is_not_there_say_so_in_one_line(cli, tmp_path):
    """A thread the source does not have was "copied" (exit 0, "Copied 1 threads, 0 checkpoints"); and each of
    these commands drew an empty progress bar above its error."""
    from test_cli import one_error_line

    source = f"sqlite:///{tmp_path / 'source.db'}"
    with Agent(db=source) as agent:
        agent.reason(QUESTION, thread="t1")
    target = tmp_path / "target.db"
    for args, message in ((("migrate", "--from", source, "--to", f"sqlite:///{target}", "--thread", "ghost"),
                           "no thread 'ghost' in the source database"),
                          (("export", "--db", source, "--thread", "ghost", "-o", "x.jsonl"), "no thread 'ghost'"),
                          (("import", "--db", source, "missing.jsonl"), "cannot read missing.jsonl")):
        result = cli(*args)
        assert result.returncode == 2 and message in one_error_line(result), args
    with Agent(db=f"sqlite:///{target}") as agent:
        assert agent.threads() == []


def test_import_refuses_existing_threads_unless_renamed_or_overwritten(db_url, tmp_path):
    path = tmp_path / "export.jsonl"
    with Agent(db=db_url) as agent:
        seed(agent)
        with path.open("w") as f:
            agent.export(f, ["t2"])
        with pytest.raises(ThreadExists, match="--rename OLD=NEW, or --overwrite"):
            agent.import_file(path)
        report = agent.import_file(path, renames={"t2": "t2-copy"})
        assert report.threads == ["t2-copy"] and agent.result("t2-copy").question == "What is 6*8?"
        agent.resume("t2")  # the original moves on; overwriting puts the exported state back
        assert agent.result("t2").status == "done"
        assert agent.import_file(path, overwrite=True).replaced == ["t2"]
        assert agent.result("t2").status == "interrupted"
        assert sorted(t.thread_id for t in agent.threads()) == ["t1", "t2", "t2-copy"]  # no staging left


@dataclasses.dataclass
class Evil:
    """A type an attacker names in a crafted export: building it would run code."""

    payload: str = "rm -rf /"

    def __post_init__(self):
        Evil.built += 1


Evil.built = 0


def hostile_files(good: list[str]) -> dict[str, tuple[list[str], str]]:
    header, first, *rest = good
    checkpoint = json.loads(first)
    pickled = dict(checkpoint, checkpoint=["pickle", checkpoint["checkpoint"][1]])
    not_b64 = dict(checkpoint, checkpoint=["msgpack", "!!!"])
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    import base64

    kind, data = JsonPlusSerializer(allowed_msgpack_modules=True).dumps_typed(
        {"id": checkpoint["checkpoint_id"], "channel_values": {"x": Evil()}})
    crafted = dict(checkpoint, checkpoint=[kind, base64.b64encode(data).decode()])
    kind, data = JsonPlusSerializer().dumps_typed({"id": checkpoint["checkpoint_id"], "channel_values": {}})
    malformed = dict(checkpoint, checkpoint=[kind, base64.b64encode(data).decode()])
    real = JsonPlusSerializer().loads_typed(("msgpack", base64.b64decode(checkpoint["checkpoint"][1])))
    real["channel_values"]["question"] = Evil()
    kind, data = JsonPlusSerializer(allowed_msgpack_modules=True).dumps_typed(real)
    crafted_full = dict(checkpoint, checkpoint=[kind, base64.b64encode(data).decode()])
    return {
        "bad json": ([header, first, "{not json", *rest], "line 3: not valid JSON"),
        "pickle": ([header, json.dumps(pickled), *rest], "line 2: checkpoint has type 'pickle'"),
        "not base64": ([header, json.dumps(not_b64), *rest], "line 2: checkpoint is not valid base64"),
        "cut short": ([header, first, *rest[:-1]], "ends before its end record"),
        "other format": (['{"format": "something-else"}', first], "line 1: not an agent-export file"),
        "crafted type": ([header, json.dumps(crafted), *rest], "line 2: checkpoint names types that are never "
                                                               "loaded .*Evil"),
        "malformed": ([header, json.dumps(malformed), *rest], "line 2: the checkpoint has no channel_versions"),
        "crafted value": ([header, json.dumps(crafted_full), *rest], "line 2: checkpoint names types that are "
                                                                       "never loaded .*Evil"),
        "unknown record": ([header, first, '{"type": "exec", "code": "rm -rf /"}', *rest], "unknown record type"),
        "wrong counts": ([header, first, *rest[:-1], json.dumps({**json.loads(rest[-1]), "checkpoints": 99})],
                         "the end record counts"),
        **delta_cases(good),
    }


def delta_cases(good: list[str]) -> dict[str, tuple[list[str], str]]:
    """Files whose checkpoints written as changes to their parents (version 2) do not add up."""
    records = [json.loads(line) for line in good]
    at = {r.get("checkpoint_id"): i for i, r in enumerate(records) if r.get("type") == "checkpoint"}
    first = next(i for i, r in enumerate(records) if r.get("delta"))
    base = at[records[first]["parent_checkpoint_id"]]
    # a checkpoint that extends a list and keeps the question (a string) from its parent: it claims to extend that
    grows = next(i for i, r in enumerate(records)
                 if r.get("delta", {}).get("extends") and "question" in r["delta"]["same"])
    bad = json.loads(good[grows])
    bad["delta"]["same"].remove("question")
    bad["delta"]["extends"]["question"] = bad["delta"]["extends"][next(iter(bad["delta"]["extends"]))]
    appending = next(i for i, r in enumerate(records) if r.get("extends"))  # writes that append to a list
    moved = [*good[:appending], *good[appending + 1:appending + 2], good[appending], *good[appending + 2:]]
    return {
        "base missing": ([*good[:base], *good[base + 1:]], f"line {first + 1}: the checkpoint is written as changes "
                                                           "to checkpoint .* which does not come next"),
        "appends to a string": ([*good[:grows], json.dumps(bad), *good[grows + 1:]],
                                f"'question' of checkpoint .* is not a list, and line {grows + 1} appends to it"),
        "writes out of place": (moved, f"line {appending + 2}: the writes append to their checkpoint's lists, but "
                                       "do not follow it"),
    }


@pytest.mark.parametrize("case", ["bad json", "pickle", "not base64", "cut short", "other format", "crafted type",
                                  "crafted value", "malformed", "unknown record", "wrong counts", "base missing",
                                  "appends to a string", "writes out of place"])
def test_a_corrupted_or_hostile_file_changes_nothing(db_url, tmp_path, case):
    with Agent(db=db_url) as agent:
        seed(agent)
        buffer = io.StringIO()
        agent.export(buffer, ["t2"])
        agent.delete("t2")
        before = [(t.thread_id, t.checkpoints) for t in agent.threads()]
        lines, message = hostile_files(buffer.getvalue().splitlines())[case]
        path = tmp_path / "hostile.jsonl"
        path.write_text("\n".join(lines) + "\n")
        Evil.built = 0
        with pytest.raises(BadInput, match=message):
            agent.import_file(path)
        assert Evil.built == 0
        assert [(t.thread_id, t.checkpoints) for t in agent.threads()] == before


def test_a_version_1_export_still_imports(db_url, tmp_path):
    """tests/data/export-v1.jsonl: seed()'s thread t2 as the agent exported it before version 2 (every
    checkpoint whole)."""
    from pathlib import Path

    v1 = Path(__file__).parent / "data" / "export-v1.jsonl"
    with Agent(db=db_url) as agent, Agent(db=f"sqlite:///{tmp_path / 'again.db'}") as again:
        agent.import_file(v1)
        assert agent.result("t2").question == "What is 6*8?" and agent.result("t2").status == "interrupted"
        move(agent, again, tmp_path / "v2.jsonl")
        assert json.loads((tmp_path / "v2.jsonl").read_text().splitlines()[0])["version"] == 2
        assert record(again, "t2") == record(agent, "t2")
        assert agent.resume("t2").answer == "48"


def test_an_export_grows_linearly_with_a_thread(tmp_path):
    """Version 1 wrote every checkpoint whole: a thread of N steps took N^2 room (1,000 steps of bench/savers.py's
    graph: 64.7 MB). Each checkpoint now holds what changed since its parent, writes what they add."""
    sizes = {}
    with Agent(db=f"sqlite:///{tmp_path / 'a.db'}") as agent:
        for steps in (19, 199):
            thread = f"t{steps}"
            agent.reason("What is " + "+".join(str(n) for n in range(2, steps + 3)) + "?", thread=thread)
            buffer = io.StringIO()
            agent.export(buffer, [thread])
            sizes[steps] = len(buffer.getvalue()) / len(agent.history(thread))
        assert sizes[199] < sizes[19] * 1.3, sizes  # whole checkpoints (version 1): 4.3x
        (tmp_path / "t199.jsonl").write_text(buffer.getvalue())
        agent.import_file(tmp_path / "t199.jsonl", renames={"t199": "copy"})
        assert [row[2:] for row in record(agent, "copy")] == [row[2:] for row in record(agent, "t199")]


def test_an_over_long_line_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    import savers.transfer

    monkeypatch.setattr(savers.transfer, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "long.jsonl"
    path.write_text('{"format": "agent-export", "version": 1}\n' + '{"type": "checkpoint", "x": "' + "a" * 5000 + '"}\n')
    with Agent(db="memory://") as agent, pytest.raises(BadInput, match="line 2: longer than"):
        agent.import_file(path)


def test_delete_removes_the_thread_its_writes_and_its_cached_replies(db_url):
    with Agent(db=db_url) as agent:
        seed(agent)
        agent.delete("t2")
        assert [t.thread_id for t in agent.threads()] == ["t1"]
        saver = agent._core.saver
        assert list(saver.list({"configurable": {"thread_id": "t2"}})) == []
        with pytest.raises(Exception, match="no thread 't2'"):
            agent.delete("t2")
        # t1 still answers from the cache what it paid for; t2's own replies are gone
        assert agent.replay("t1", agent.history("t1")[2].checkpoint_id).usage.cached_calls > 0
        again = agent.reason("What is 6*7?", thread="t2")
        assert again.usage.llm_calls == 3 and again.usage.cached_calls == 0


def test_delete_asks_on_a_terminal_and_needs_yes_in_scripts(cli):
    assert cli("reason", "What is 1+1?", "--thread", "t1").returncode == 0
    refused = cli("delete", "--thread", "t1")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert cli("delete", "--thread", "t1", "--yes").returncode == 0
    assert json.loads(cli("threads", "--json").stdout) == []


def test_export_and_import_on_the_command_line(cli, tmp_path):
    assert cli("reason", QUESTION, "--thread", "t1").returncode == 0
    exported = cli("export", "-o", "backup.jsonl")
    assert exported.returncode == 0 and (tmp_path / "backup.jsonl").is_file()
    # Counts read as words: "1 thread", not "1 threads".
    assert "Exported 1 thread, " in exported.stderr and cli("threads").stdout.splitlines()[0].strip() == "1 thread"
    copied = cli("import", "backup.jsonl", "--db", "sqlite:///other.db")
    assert copied.returncode == 0 and copied.stdout.startswith("Imported 1 thread (t1), "), copied.stdout
    imported = cli("import", "backup.jsonl", "--db", "sqlite:///copy.db", "--json")
    assert imported.returncode == 0 and json.loads(imported.stdout)["threads"] == ["t1"]
    again = cli("import", "backup.jsonl", "--db", "sqlite:///copy.db")
    assert again.returncode == 2 and "already exists" in again.stderr
    renamed = cli("import", "backup.jsonl", "--db", "sqlite:///copy.db", "--rename", "t1=t9", "--json")
    assert json.loads(renamed.stdout)["threads"] == ["t9"]
    assert cli("import", "backup.jsonl", "--rename", "nope").returncode == 2


def test_export_import_and_migrate_report_each_checkpoint(tmp_path):
    """What the command line's progress bars count: every checkpoint written, with the total (an import's once
    its file is checked)."""
    with Agent(db=f"sqlite:///{tmp_path / 'a.db'}") as agent:
        agent.reason(QUESTION, thread="t")
        agent.reason("What is 6*7?", thread="other")
        checkpoints = len(agent.history("t"))
        exported: list[int] = []
        with (tmp_path / "t.jsonl").open("w") as f:
            agent.export(f, ["t"], on_checkpoint=exported.append)
        imported: list[int] = []
        agent.import_file(tmp_path / "t.jsonl", renames={"t": "u"}, on_checkpoint=imported.append)
        migrated: list[int] = []
        with Agent(db=f"sqlite:///{tmp_path / 'b.db'}") as target:
            agent.migrate_to(target, ["t"], on_checkpoint=migrated.append)
        assert checkpoints > 3 and exported == imported == migrated == [checkpoints] * checkpoints


def _ctrl_c_at(n: int):
    """An on_checkpoint that is cut short, as by Ctrl+C, at the n-th checkpoint written."""
    seen = []

    def written(total: int) -> None:
        seen.append(total)
        if len(seen) == n:
            raise KeyboardInterrupt

    return written


def test_migrate_and_import_cut_short_by_ctrl_c_change_nothing(db_url, tmp_path):
    """All or nothing holds for Ctrl+C too: it left the threads copied so far in the target (and a migration
    run again refused them), and an import's staging copy beside the thread it was to replace."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    with Agent(db=source) as agent, Agent(db=db_url) as target:
        seed(agent)
        agent.reason("What is 9*9?", thread="t3")
        with pytest.raises(KeyboardInterrupt):
            agent.migrate_to(target, on_checkpoint=_ctrl_c_at(len(agent.history("t1")) + 3))
        assert target.threads() == []
        target.reason("What is 1+1?", thread="mine")  # a thread of the target's own: the clean-up leaves it
        with pytest.raises(KeyboardInterrupt):
            agent.migrate_to(target, ["t1", "t2"], on_checkpoint=_ctrl_c_at(2))
        assert [t.thread_id for t in target.threads()] == ["mine"]
        assert sorted(agent.migrate_to(target).threads) == ["t1", "t2", "t3"]  # run again, it goes through
        expected = record(target, "t1")

        path = tmp_path / "t1.jsonl"
        with path.open("w") as f:
            agent.export(f, ["t1"])
        target.replay("t1", target.history("t1")[2].checkpoint_id)  # the target's t1 moves on from the file's
        before = record(target, "t1")
        with pytest.raises(KeyboardInterrupt):
            target.import_file(path, overwrite=True, on_checkpoint=_ctrl_c_at(4))
        assert record(target, "t1") == before != expected
        assert sorted(t.thread_id for t in target.threads()) == ["mine", "t1", "t2", "t3"]  # no staging copy
        with pytest.raises(KeyboardInterrupt):
            target.import_file(path, renames={"t1": "t9"}, on_checkpoint=_ctrl_c_at(1))
        assert "t9" not in [t.thread_id for t in target.threads()]


def test_ctrl_c_while_an_import_replaces_threads_lets_it_finish_first(tmp_path):
    """Once every staging copy is whole, an overwriting import replaces the threads one by one; a Ctrl+C then
    (here, right after the first old thread is deleted) left that thread gone and both copies under their
    staging names - prune, which trims through such an import, showed them as threads."""
    from agent.lifecycle import import_file

    path = tmp_path / "both.jsonl"
    with Agent(db=f"sqlite:///{tmp_path / 'a.db'}") as agent:
        seed(agent)
        with path.open("w") as f:
            agent.export(f, ["t1", "t2"])
        expected = {t: record(agent, t) for t in ("t1", "t2")}
        agent.replay("t1", agent.history("t1")[2].checkpoint_id)
        agent.resume("t2")
        deleted = []

        def delete(thread: str) -> None:
            agent._erase(thread)
            deleted.append(thread)
            if len(deleted) == 1:  # the first old thread to go (the file's threads come in no set order)
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt, match="and finished it: every thread was replaced"):
            import_file(agent._core.saver, path, {}, True, agent._exists, delete)
        assert {t: record(agent, t) for t in ("t1", "t2")} == expected
        assert sorted(t.thread_id for t in agent.threads()) == ["t1", "t2"]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])  # Ctrl+C; a service manager, docker stop
def test_migrate_interrupted_on_the_command_line_says_so_and_leaves_the_target_as_it_was(cli, tmp_path, stop):
    from test_cli import one_error_line

    source, target = f"sqlite:///{tmp_path / 'source.db'}", tmp_path / "target.db"
    with Agent(db=source) as agent:
        agent.reason(QUESTION, thread="t")
        head = agent.history("t")[-1].checkpoint_id
        for i in range(300):
            agent.branch("t", head, f"copy-{i}")
    # As from a terminal: pytest-xdist's workers ignore SIGINT, and a child inherits that.
    run = subprocess.Popen([sys.executable, "-m", "agent", "migrate", "--from", source, "--to", f"sqlite:///{target}"],
                           cwd=tmp_path, env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not _holds_checkpoints(target):  # the migration is under way
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)
    run.send_signal(stop)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "Traceback" not in err  # below the progress bar, one line:
    assert err.strip().splitlines()[-1] == "Interrupted: what was copied is removed; the target database is as it was."
    with Agent(db=f"sqlite:///{target}") as agent:
        assert agent.threads() == []
    again = cli("migrate", "--from", source, "--to", f"sqlite:///{target}")
    assert again.returncode == 0 and "Copied 301 threads" in again.stdout, again.stderr
    once_more = cli("migrate", "--from", source, "--to", f"sqlite:///{target}")  # named in one short line
    assert once_more.returncode == 2 and one_error_line(once_more) == (
        "error: threads 'copy-0', 'copy-1', 'copy-10', 'copy-100', 'copy-101' and 296 more already exist in the "
        "target database; delete them there first, or export and import with --rename")


def _holds_checkpoints(path) -> bool:
    if not path.exists():
        return False
    with contextlib.closing(sqlite3.connect(path)) as conn:
        try:
            return conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] > 0
        except sqlite3.OperationalError:  # not made yet
            return False


def test_an_export_holds_the_checkpoints_of_subgraphs(db_url, tmp_path, request):
    """A graph whose subgraph keeps checkpoints (in a namespace of its own): the export listed the thread with
    the root namespace and left those out (4 of 8 here). Import puts back every namespace as it was."""
    import operator
    from typing import Annotated, TypedDict

    from conftest import fresh_db_url
    from langgraph.graph import END, START, StateGraph

    import savers
    from agent.lifecycle import import_file
    from savers.transfer import export_records, write_export

    class State(TypedDict):
        items: Annotated[list, operator.add]

    def graph(checkpointer):
        inner = StateGraph(State)
        inner.add_node("a", lambda s: {"items": ["inner a"]})
        inner.add_node("b", lambda s: {"items": ["inner b"]})
        inner.add_edge(START, "a")
        inner.add_edge("a", "b")
        inner.add_edge("b", END)
        outer = StateGraph(State)
        outer.add_node("first", lambda s: {"items": ["outer"]})
        outer.add_node("sub", inner.compile(checkpointer=True))  # checkpoints of its own, namespace "sub"
        outer.add_edge(START, "first")
        outer.add_edge("first", "sub")
        outer.add_edge("sub", END)
        return outer.compile(checkpointer=checkpointer)

    def everything(saver) -> list:
        return [(t.config["configurable"]["checkpoint_ns"], t.config["configurable"]["checkpoint_id"],
                 (t.parent_config or {}).get("configurable", {}).get("checkpoint_id"), t.checkpoint["channel_values"],
                 t.metadata, sorted(t.pending_writes or [])) for t in saver.list({"configurable": {"thread_id": "t"}})]

    (tmp_path / "other").mkdir()
    other = fresh_db_url("sqlite" if db_url.startswith("sqlite") else "postgres", request, tmp_path / "other")
    with savers.open_saver(db_url) as source, savers.open_saver(other) as target:
        graph(source).invoke({"items": []}, {"configurable": {"thread_id": "t"}})
        original = everything(source)
        assert {row[0] for row in original} == {"", "sub"}
        with (tmp_path / "t.jsonl").open("w") as f:
            assert write_export(export_records(source, ["t"]), f)["checkpoints"] == len(original)
        import_file(target, tmp_path / "t.jsonl", {}, False, lambda thread: False, lambda thread: None)
        assert everything(target) == original


def test_async_agent_has_the_same_lifecycle(db_url, tmp_path):
    import asyncio

    from agent import AsyncAgent

    async def main():
        path = tmp_path / "async.jsonl"
        async with AsyncAgent(db=db_url) as agent:
            await agent.reason(QUESTION, thread="a")
            with path.open("w") as f:
                await agent.export(f)
            await agent.import_file(path, renames={"a": "b"})
            await agent.delete("a")
            async with AsyncAgent(db=f"sqlite:///{tmp_path / 'other.db'}") as other:
                await agent.migrate_to(other)
                return [t.thread_id for t in await agent.threads()], (await other.result("b")).answer

    assert asyncio.run(main()) == (["b"], "20")


LONG = "What is " + "+".join(str(n) for n in range(2, 42)) + "?"  # 39 steps


def test_prune_keeps_every_branch_resumable_and_shrinks_sqlite(db_url):
    from agent.lifecycle import RetentionPolicy

    with Agent(db=db_url) as agent:
        for i in range(4):
            agent.reason(LONG.replace("?", f"+{i}?"), thread=f"done{i}")
        agent.reason(LONG, thread="open")
        rows = agent.history("open")
        agent.fork("open", rows[20].checkpoint_id, {"plan.20": "Add the result of step 19 and 21"}, run=False)
        before = {t.thread_id: t.checkpoints for t in agent.threads()}

        dry = agent.prune(RetentionPolicy(keep=3), dry_run=True)
        assert {t.thread_id: t.checkpoints for t in agent.threads()} == before
        assert dry.checkpoints > 150 and dry.bytes_freed > 0

        report = agent.prune(RetentionPolicy(keep=3))
        assert report.removed == dry.removed and report.checkpoints == dry.checkpoints
        if db_url.startswith("sqlite"):
            assert report.file_bytes_after < report.file_bytes_before / 2
        after = {t.thread_id: t.checkpoints for t in agent.threads()}
        assert after["done0"] == 3 and after["open"] == 6  # three on each of its two branches
        assert agent.result("done0").answer == str(sum(range(2, 42)))  # the final state is still shown
        assert agent.result("open").status == "interrupted"
        assert agent.resume("open").answer == str(sum(range(2, 42)))  # the edit resumes from what was kept
        head = agent.history("done1")[0]
        assert agent.replay("done1", head.checkpoint_id).status == "done"


def stored_bytes(url: str, thread: str) -> int:
    """Bytes of a thread's rows: its checkpoints, the values stored apart from them (Postgres), its writes."""
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return sum(conn.execute(sql, (thread,)).fetchone()[0] or 0 for sql in (
                "SELECT SUM(LENGTH(checkpoint) + LENGTH(metadata) + IFNULL(LENGTH(parent_writes), 0)) FROM checkpoints "
                "WHERE thread_id = ?",
                "SELECT SUM(LENGTH(value)) FROM writes WHERE thread_id = ?"))
    import psycopg

    with psycopg.connect(url) as conn:
        return sum(conn.execute(sql, (thread,)).fetchone()[0] or 0 for sql in (
            "SELECT SUM(pg_column_size(checkpoint) + pg_column_size(metadata)) FROM checkpoints WHERE thread_id = %s",
            "SELECT SUM(LENGTH(blob)) FROM checkpoint_blobs WHERE thread_id = %s",
            "SELECT SUM(LENGTH(blob)) FROM checkpoint_writes WHERE thread_id = %s"))


def test_imported_migrated_and_trimmed_threads_take_the_room_the_original_did(db_url, tmp_path, request):
    """An export lists a thread newest first: written in that order, with every channel counted as new, each
    checkpoint stored its lists whole - a thread of N steps in N^2 room. Import, migrate and trim (through an
    import) write a thread oldest first, with only its changed channels as new."""
    from conftest import fresh_db_url

    from agent.lifecycle import RetentionPolicy

    long = "What is " + "+".join(str(n) for n in range(2, 202)) + "?"  # 199 steps: the old way took 1.85x the room
    (tmp_path / "other").mkdir()
    other = fresh_db_url("sqlite" if db_url.startswith("sqlite") else "postgres", request, tmp_path / "other")
    with Agent(db=db_url) as agent, Agent(db=other) as target:
        agent.reason(long, thread="t")
        original, view = stored_bytes(db_url, "t"), record(agent, "t")
        with (tmp_path / "t.jsonl").open("w") as f:
            agent.export(f, ["t"])
        agent.import_file(tmp_path / "t.jsonl", renames={"t": "imported"})
        agent.migrate_to(target, ["t"])
        for url, thread in ((db_url, "imported"), (other, "t")):
            assert stored_bytes(url, thread) < original * 1.1, thread
        assert [row[1:] for row in record(target, "t")] == [row[1:] for row in view]
        assert [row[2:] for row in record(agent, "imported")] == [row[2:] for row in view]
        checkpoints = len(view)
        agent.prune(RetentionPolicy(keep=checkpoints - 3), thread="t")
        assert len(agent.history("t")) == checkpoints - 3
        assert stored_bytes(db_url, "t") < original * 1.1
        assert agent.result("t").answer == str(sum(range(2, 202)))


def test_prune_policy_options(db_url):
    from agent.lifecycle import RetentionPolicy

    with Agent(db=db_url) as agent:
        agent.reason(LONG, thread="finished")
        agent.fork("finished", agent.history("finished")[10].checkpoint_id, {"results.5": "99"}, run=False)
        agent.reason(LONG.replace("?", "+1?"), thread="other")
        assert agent.prune(RetentionPolicy(keep=2, older_than_s=3600)).checkpoints == 0  # all are young
        total = len(agent.history("finished"))
        # "finished" has an edit waiting on top, so it is not complete; "other" is, and is left whole
        assert agent.prune(RetentionPolicy(keep=2, keep_completed=True)).removed == {"finished": total - 4}
        assert len(agent.history("finished")) == 4  # two on each branch
        whole = len(agent.history("other"))
        assert agent.prune(RetentionPolicy(keep=2), thread="other").removed == {"other": whole - 2}
        with pytest.raises(Exception, match="no thread 'ghost'"):
            agent.prune(RetentionPolicy(), thread="ghost")


def test_retention_from_config_applies_after_each_run(cli):
    (cli.cwd / "agent.toml").write_text("[retention]\nkeep = 4\n")
    assert cli("reason", LONG, "--thread", "t1").returncode == 0
    rows = json.loads(cli("history", "--thread", "t1", "--json").stdout)
    assert len(rows) == 4 and rows[-1]["head"]
    assert cli("prune", "--older-than", "soon").returncode == 2
    dry = json.loads(cli("prune", "--keep", "1", "--dry-run", "--json").stdout)
    assert dry == {**dry, "dry_run": True, "removed": {"t1": 3}}
    assert dry["file_bytes_after"] == dry["file_bytes_before"]  # was larger: the leases the dry run took


def test_async_prune_and_retention_on_an_encrypted_database(db_url, monkeypatch):
    import asyncio

    from agent import AsyncAgent
    from agent.config import Retention, Settings
    from agent.lifecycle import RetentionPolicy

    monkeypatch.setenv("AGENT_ENCRYPTION_KEY", "correct horse battery staple 42")

    async def main() -> None:
        async with AsyncAgent(settings=Settings(db=db_url, retention=Retention(keep=3))) as agent:
            assert (await agent.reason(QUESTION, thread="kept")).answer == "20"
            assert [(t.thread_id, t.checkpoints) for t in await agent.threads()] == [("kept", 3)]
        async with AsyncAgent(db=db_url) as agent:
            await agent.reason(LONG, thread="long")
            total = len(await agent.history("long"))
            dry = await agent.prune(RetentionPolicy(keep=2), dry_run=True)
            assert dry.removed == {"long": total - 2, "kept": 1}
            assert len(await agent.history("long")) == total
            report = await agent.prune(RetentionPolicy(keep=2), thread="long")
            assert report.removed == {"long": total - 2}
            if db_url.startswith("sqlite"):
                assert report.file_bytes_after < report.file_bytes_before
            assert len(await agent.history("long")) == 2
            assert (await agent.result("long")).answer == str(sum(range(2, 42)))
            assert (await agent.result("kept")).answer == "20"

    asyncio.run(main())
