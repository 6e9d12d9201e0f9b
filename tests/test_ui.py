"""The web UI over HTTP (no browser): what each page shows, paging, read-only by default, the token and the
guards, the edit preview, runs streamed as server-sent events, export - and the graph and diff layouts.

The browser drives the same pages in test_ui_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket

import httpx
import pytest

from agent import Agent, AsyncAgent
from agent.history import CheckpointInfo
from agent.ui import sidebyside
from agent.ui.app import create_app
from agent.ui.lanes import FOLD_MIN, layout

QUESTION = "What is 17*23+4?"


def ui(db_url: str, scenario, *, write: bool = False, token: str | None = None, local: bool = True,
       host: str = "127.0.0.1:8765"):
    """Run `scenario(client, agent)` against the app on an open AsyncAgent, as the server would."""

    async def main():
        async with AsyncAgent(db=db_url, create=False) as agent:
            app = create_app(agent, write=write, token=token, local=local)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
                return await scenario(client, agent)

    return asyncio.run(main())


async def csrf_of(client, url: str = "/") -> str:
    page = await client.get(url)
    return re.search(r'"X-Agent-UI": "([^"]+)"', page.text).group(1)


@pytest.fixture
def seeded(db_url):
    with Agent(db=db_url, model="offline") as agent:
        agent.reason(QUESTION, thread="t1")
        agent.reason("What is 2*3+4?", thread="t2")
        rows = agent.history("t1")
        agent.fork("t2", agent.history("t2")[-1].checkpoint_id, {"question": "What is 6*7?"}, run=False)
    return db_url, rows


def test_thread_list_shows_status_and_spend_and_searches(seeded):
    db_url, _ = seeded

    async def scenario(client, agent):
        page = (await client.get("/")).text
        t1 = re.search(r'<tr data-thread="t1">(.*?)</tr>', page, re.S).group(1)
        assert "done" in t1 and QUESTION in t1 and "395" in t1 and "2/2" in t1 and "4 calls" in t1
        assert '<tr data-thread="t2">' in page and "interrupted" in page
        only = (await client.get("/?q=6*7", headers={"hx-request": "true", "hx-target": "threads"})).text
        assert "<html" not in only and 'data-thread="t2"' in only and 'data-thread="t1"' not in only
        stopped = (await client.get("/?status=interrupted")).text
        assert 'data-thread="t2"' in stopped and 'data-thread="t1"' not in stopped

    ui(db_url, scenario)


def test_thread_list_is_paged(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'many.db'}"
    with Agent(db=db_url, model="offline") as agent:
        for n in range(55):
            agent.reason(f"What is {n}+1?", thread=f"t{n:02d}")

    async def scenario(client, agent):
        first, second = (await client.get("/")).text, (await client.get("/?page=2")).text
        assert first.count("<tr data-thread=") == 50 and "1–50 of 55 threads" in first
        assert second.count("<tr data-thread=") == 5 and 'data-thread="t00"' in second  # oldest last
        found = (await client.get("/?q=What is 7%2B1")).text
        assert found.count("<tr data-thread=") == 1 and 'data-thread="t07"' in found

    ui(db_url, scenario)


def test_thread_page_graph_checkpoint_and_model_call(seeded):
    db_url, rows = seeded

    async def scenario(client, agent):
        page = (await client.get("/thread", params={"t": "t1"})).text
        assert page.count('<li class="row') == len(rows) and "HEAD" in page
        analyze = next(r for r in rows if r.node == "analyze")
        detail = (await client.get("/checkpoint", params={"t": "t1", "c": analyze.checkpoint_id},
                                   headers={"hx-request": "true"})).text
        assert "Multiply 17 by 23" in detail and f"Question: {QUESTION}" in detail
        assert '"steps": [' in detail.replace("&#34;", '"')  # the stored reply of the plan request
        assert "runs next</dt><dd class=\"next\">execute" in detail
        missing = await client.get("/thread", params={"t": "nope"})
        assert missing.status_code == 404 and "no thread &#39;nope&#39;" in missing.text

    ui(db_url, scenario)


def test_read_only_by_default(seeded):
    db_url, rows = seeded

    async def scenario(client, agent):
        page = (await client.get("/thread", params={"t": "t1"})).text
        assert "Fork with an edit" not in page and "read-only" in page
        refused = await client.post("/replay", data={"t": "t1", "c": rows[2].checkpoint_id},
                                    headers={"x-agent-ui": await csrf_of(client)})
        assert refused.status_code == 403 and "--write" in refused.text
        return len(await agent.history("t1"))

    assert ui(db_url, scenario) == len(rows)


def test_actions_need_the_pages_own_header(seeded):
    db_url, rows = seeded

    async def scenario(client, agent):
        forged = await client.post("/replay", data={"t": "t1", "c": rows[2].checkpoint_id})
        assert forged.status_code == 403
        return len(await agent.history("t1"))

    assert ui(db_url, scenario, write=True) == len(rows)


def test_only_this_machine_may_ask_and_a_token_guards_everything(seeded):
    db_url, _ = seeded

    async def rebinding(client, agent):
        return (await client.get("/")).status_code

    assert ui(db_url, rebinding, host="evil.example:8765") == 403

    async def with_token(client, agent):
        assert (await client.get("/")).status_code == 401
        assert (await client.get("/", headers={"authorization": "Bearer wrong"})).status_code == 401
        entry = await client.get("/thread?t=t1&token=s3cret")
        assert entry.status_code == 303 and entry.headers["location"] == "/thread?t=t1"
        assert (await client.get("/thread?t=t1")).status_code == 200  # the cookie carries it now
        client.cookies.clear()
        assert (await client.get("/", headers={"authorization": "Bearer s3cret"})).status_code == 200

    ui(db_url, with_token, token="s3cret", local=False, host="10.1.2.3:8765")


def test_cli_refuses_a_public_host_without_token_and_a_taken_port(cli, tmp_path):
    refused = cli("ui", "--host", "0.0.0.0", "--no-browser")
    assert refused.returncode == 2 and "--token" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = cli("ui", "--port", str(taken.getsockname()[1]), "--no-browser")
    assert busy.returncode == 2 and "choose another --port" in busy.stderr
    # --write runs the configured model: one it cannot use is refused at start, not in every page that runs
    unusable = cli("ui", "--write", "--no-browser", "--port", "0", env={"AGENT_MODEL": "bogus"})
    assert unusable.returncode == 2 and "unknown model 'bogus'" in unusable.stderr
    assert len(unusable.stderr.strip().splitlines()) == 1


def test_preview_writes_nothing_then_fork_streams_progress(seeded):
    db_url, rows = seeded
    after_step_1 = next(r for r in rows if r.summary.startswith("step 1"))

    async def scenario(client, agent):
        headers = {"x-agent-ui": await csrf_of(client)}
        form = {"t": "t1", "c": after_step_1.checkpoint_id, "field:plan.2": "Add the result of step 1 and 5"}
        preview = (await client.post("/fork/preview", data=form, headers=headers)).text
        assert "execute step 2: Add the result of step 1 and 5" in preview and "nothing is written yet" in preview
        assert re.search(r'data-field="plan".*?class="changed".*?Add the result of step 1 and 4.*?and 5', preview, re.S)
        assert len(await agent.history("t1")) == len(rows)

        assignments = re.search(r'name="assignments" value="([^"]+)"', preview).group(1).replace("&#34;", '"')
        bad = await client.post("/fork", data={"t": "t1", "c": after_step_1.checkpoint_id, "assignments": "{bad"},
                                headers=headers)  # was a 500, with a traceback in the server's output
        assert bad.status_code == 400 and "the edits are not JSON" in bad.text
        started = (await client.post("/fork", data={"t": "t1", "c": after_step_1.checkpoint_id,
                                                     "assignments": assignments}, headers=headers)).text
        events_url = re.search(r'data-events="([^"]+)"', started).group(1)
        events = []
        async with client.stream("GET", events_url) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert [e["kind"] for e in events][-1] == "done" and events[-1]["result"]["answer"] == "395"
        assert any(e.get("text") == "step 2 Add the result of step 1 and 5 → 396" for e in events)
        graph = (await client.get("/graph", params={"t": "t1"})).text
        assert "↳ edit" in graph
        return await agent.history("t1")

    after = ui(db_url, scenario, write=True)
    edit = next(r for r in after if r.source == "update")
    assert edit.edit == {"plan.2": "Add the result of step 1 and 5"} and edit.parent_checkpoint_id == after_step_1.checkpoint_id


def test_resume_an_interrupted_thread_and_branch_from_the_page(seeded):
    db_url, rows = seeded

    async def scenario(client, agent):
        headers = {"x-agent-ui": await csrf_of(client)}
        started = (await client.post("/resume", data={"t": "t2"}, headers=headers)).text
        async with client.stream("GET", re.search(r'data-events="([^"]+)"', started).group(1)) as stream:
            body = "".join([line async for line in stream.aiter_lines()])
        assert '"answer": "42"' in body
        made = await client.post("/branch", data={"t": "t1", "c": rows[3].checkpoint_id, "to": "t1-copy"},
                                 headers=headers)
        assert made.status_code == 200 and "t1-copy" in made.text and made.headers["hx-trigger"] == "graph-changed"
        again = await client.post("/branch", data={"t": "t1", "c": rows[3].checkpoint_id, "to": "t1-copy"},
                                  headers=headers)
        assert again.status_code == 409 and "already exists" in again.text
        origin = (await client.get("/thread", params={"t": "t1"})).text
        copy = (await client.get("/thread", params={"t": "t1-copy"})).text
        assert "Branched into:" in origin and "→ t1-copy" in origin
        assert "Branched from" in copy and f"t1 @ {rows[3].checkpoint_id[:13]}" in copy
        return (await agent.result("t2")).status

    assert ui(db_url, scenario, write=True) == "done"


def test_diff_across_threads_side_by_side(seeded):
    db_url, _ = seeded

    async def scenario(client, agent):
        page = (await client.get("/diff", params={"a": "t1", "b": "t2"})).text
        question = re.search(r'<tbody class="field changed" data-field="question">(.*?)</tbody>', page, re.S).group(1)
        assert QUESTION in question and "What is 6*7?" in question

    ui(db_url, scenario)


def test_export_a_thread_and_a_branch(seeded):
    db_url, rows = seeded

    async def scenario(client, agent):
        whole = await client.get("/export", params={"t": "t1"})
        assert whole.headers["content-disposition"].startswith('attachment; filename="t1.history.json"')
        data = whole.json()
        assert whole.text == json.dumps(data, ensure_ascii=False, indent=2)  # streamed, laid out as one dump
        assert [c["checkpoint_id"] for c in data["checkpoints"]] == [r.checkpoint_id for r in rows]
        assert data["checkpoints"][-1]["values"]["answer"] == "395" and data["checkpoints"][-1]["status"] == "done"
        part = (await client.get("/export", params={"t": "t1", "c": rows[3].checkpoint_id[:16]})).json()
        assert [c["checkpoint_id"] for c in part["checkpoints"]] == [r.checkpoint_id for r in rows[:4]]

    ui(db_url, scenario)


def test_no_request_reaches_another_database(seeded, tmp_path):
    db_url, _ = seeded
    other = tmp_path / "other.db"

    async def scenario(client, agent):
        for path in ("/", "/thread?t=t1", "/diff?a=t1", "/export?t=t1"):
            response = await client.get(path + ("&" if "?" in path else "?") + f"db=sqlite:///{other}")
            assert response.status_code == 200

    ui(db_url, scenario)
    assert not other.exists()


# -- layouts, without a database ----------------------------------------------------------------------------


def row(cid: str, parent: str | None, node: str = "execute", source: str = "loop", head: bool = False):
    return CheckpointInfo(cid, parent, 0, node, source, None, [], "", head)


def test_branches_get_lanes_of_their_own_and_siblings_do_not_share():
    rows = [row("a", None), row("b", "a"), row("c", "b", head=True),
            row("d", "a", "fork", "fork"), row("e", "d"), row("f", "a", "analyze", "update")]
    graph = layout(rows)
    lane = {item.key: item.lane for item in graph.items}
    assert lane["a"] == lane["b"] == lane["c"] == 0
    assert lane["d"] == lane["e"] == 1 and lane["f"] == 2
    assert [item.key for item in graph.items] == ["a", "d", "e", "f", "b", "c"]  # a branch right under its origin
    kinds = {line.key: line.kind for line in graph.lines}
    assert kinds == {"a": "main", "d": "replay", "f": "edit"}


def test_long_runs_fold_filters_leave_dashed_edges_and_branches_collapse():
    rows = [row("00", None, "input", "input")] + [row(f"{n:02d}", f"{n - 1:02d}") for n in range(1, 12)]
    rows += [row("x1", "03", "fork", "fork")]
    folded = layout(rows)
    assert any(item.folded and len(item.rows) >= FOLD_MIN - 2 for item in folded.items)
    filtered = layout(rows, show=lambda r: r.node != "execute" or r.checkpoint_id == "11", fold=False)
    assert [item.key for item in filtered.items] == ["00", "x1", "11"]
    assert any(edge.skipped for edge in filtered.edges)
    collapsed = layout(rows, collapsed={"x1"}, fold=False)
    holder = next(item for item in collapsed.items if item.key == "03")
    assert [line.key for line in holder.collapsed] == ["x1"] and collapsed.hidden == 1


def test_side_by_side_matches_list_items():
    fields = {f.name: f for f in sidebyside.compare(
        {"plan": ["a", "b", "c"], "answer": "1"}, {"plan": ["a", "new", "b", "c"], "answer": "1"})}
    assert [(c.kind, c.new) for c in fields["plan"].cells] == [("same", "a"), ("added", "new"), ("same", "b"),
                                                                ("same", "c")]
    assert fields["answer"].kind == "same"


def test_model_call_of_a_remote_model_is_found_whatever_endpoint_the_ui_runs_with(db_url, llm, monkeypatch):
    with Agent(db=db_url, model="openai:gpt-4o-mini") as agent:
        agent.reason(QUESTION, thread="remote")
        step_1 = next(r for r in agent.history("remote") if r.summary.startswith("step 1"))
    monkeypatch.delenv("OPENAI_BASE_URL")  # the UI is started without the endpoint the run used

    async def scenario(client, agent):
        return (await client.get("/checkpoint", params={"t": "remote", "c": step_1.checkpoint_id},
                                 headers={"hx-request": "true"})).text

    detail = ui(db_url, scenario).replace("&#34;", '"')
    assert "Carry out step 1: Multiply 17 by 23" in detail and '"result": "391"' in detail
    assert "first paid for:" in detail


def test_names_and_values_are_shown_as_text_never_as_markup(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'x.db'}"
    evil = "<img src=x onerror=alert(1)>"
    with Agent(db=db_url, model="offline") as agent:
        agent.reason(f"What is 1+1? {evil}", thread=evil)

    async def scenario(client, agent):
        pages = [(await client.get("/")).text, (await client.get("/thread", params={"t": evil})).text]
        return all(evil not in page and "&lt;img src=x onerror=alert(1)&gt;" in page for page in pages)

    assert ui(db_url, scenario)


def test_a_thread_another_process_is_running_shows_as_running(db_url, llm, cli):
    llm.hold(1)  # the run's first model call waits until released
    proc = cli.popen("reason", QUESTION, "--thread", "busy", "--model", "openai:gpt-4o-mini", "--db", db_url,
                     env=llm.env())
    try:
        assert llm.held.wait(timeout=60), proc.stderr.read() if proc.poll() is not None else "no call arrived"

        async def scenario(client, agent):
            listed = (await client.get("/")).text
            page = (await client.get("/thread", params={"t": "busy"})).text
            return listed, page

        listed, page = ui(db_url, scenario, write=True)
        row = re.search(r'<tr data-thread="busy">(.*?)</tr>', listed, re.S).group(1)
        assert 'class="status running"' in row
        assert 'class="status running"' in page and "Resume the run" not in page
    finally:
        llm.release.set()
        assert proc.wait(timeout=60) == 0


def test_search_in_state_shows_the_checkpoints_whose_state_holds_the_text(seeded):
    db_url, rows = seeded
    with Agent(db=db_url) as agent:
        holding = {r.checkpoint_id for r in rows if "391" in json.dumps(agent.state("t1", r.checkpoint_id).values)}
    assert 0 < len(holding) < len(rows)

    async def scenario(client, agent):
        graph = (await client.get("/graph", params={"t": "t1", "q": "391", "fold": "0"},
                                  headers={"hx-request": "true"})).text
        return set(re.findall(r'data-checkpoint="([^"]+)"', graph))

    assert ui(db_url, scenario) == holding


def test_a_long_thread_is_read_a_piece_at_a_time_and_its_states_searched_the_same_way(tmp_path):
    """The thread page read every checkpoint's state and kept them all for as long as the server ran (a thread
    of 2,000 offline steps: 813 MB); its record now keeps rows, usage and errors, and a search in the states
    reads them again a piece at a time."""
    import tracemalloc

    from test_history import grow

    from agent.history import READ_PIECE
    from agent.ui.store import Store

    url = f"sqlite:///{tmp_path / 'long.db'}"
    grow(url, "large", 600)

    async def main():
        async with AsyncAgent(db=url) as agent:
            store = Store(agent)
            await agent.history("large", limit=READ_PIECE)
            async def export():
                sent = [len(piece) async for piece in store.export("large", record.rows)]
                return len(sent), sum(sent)

            record = None
            peaks, read = {}, {"page": lambda: agent.history("large", limit=READ_PIECE),
                               "record": lambda: store.record("large"), "export": export}
            for what in read:
                tracemalloc.start()
                try:
                    got = await read[what]()
                    peaks[what] = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                record = got if what == "record" else record
            pieces, exported = got
            states = [s async for s in agent._core.reader().aget_state_history(agent._core.config("large"))]
            holding = {s.config["configurable"]["checkpoint_id"] for s in states
                       if "result 300" in json.dumps(s.values, ensure_ascii=False).lower()}
            return record, peaks, holding, await store.search(record, "Result 300 "), states, pieces, exported

    record, peaks, holding, found, states, pieces, exported = asyncio.run(main())
    assert len(record.rows) == len(states) >= 600 and peaks["record"] < 3 * peaks["page"], peaks
    # The export document is streamed a checkpoint at a time: more bytes than the server ever holds (built
    # whole, the document and the states in it were held at once).
    assert pieces == len(states) + 2 and peaks["export"] < exported / 3, (peaks, exported)
    assert 0 < len(holding) < len(states) and found == holding
    assert record.usage[record.head] == states[0].values["usage"]
