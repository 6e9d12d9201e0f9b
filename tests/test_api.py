"""The Python API other services use: Agent and AsyncAgent on SQLite and Postgres, from many threads and tasks."""

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver

import savers
from agent import Agent, AgentError, AsyncAgent, NotOpen, QuestionMismatch, RunResult, ThreadNotFound, Usage

QUESTIONS = {f"What is {a}*{b}+{a}?": str(a * b + a) for a, b in [(3, 4), (17, 23), (120, 7), (9, 9)]}


def test_sync_agent_reasons_resumes_and_reports(db_url):
    with Agent(db=db_url, model="offline") as agent:
        result = agent.reason("What is 2+3*4?", thread="t1")
        assert isinstance(result, RunResult)
        assert (result.answer, result.status, result.thread_id) == ("14", "done", "t1")
        assert result.checkpoint_id and result.usage == Usage(llm_calls=4, input_tokens=367, output_tokens=50)
        again = agent.resume("t1")
        assert again.from_store and again.answer == "14" and again.usage == result.usage
        with pytest.raises(QuestionMismatch):
            agent.reason("What is 1+1?", thread="t1")
        with pytest.raises(ThreadNotFound):
            agent.resume("t2")
    # a new process (here: a new Agent) sees the same stored thread
    with Agent(db=db_url) as agent:
        assert agent.result("t1").answer == "14"


def test_async_agent_is_the_same_api_awaited(db_url):
    async def main():
        async with AsyncAgent(db=db_url, model="offline") as agent:
            events = []
            result = await agent.reason("What is 17*23+4?", thread="a1", on_event=events.append)
            assert result.answer == "395" and result.status == "done"
            assert [e.kind for e in events] == ["plan", "step", "step", "validation"]
            assert (await agent.resume("a1")).from_store
            results = await asyncio.gather(*(agent.reason(q, thread=f"g{i}") for i, q in enumerate(QUESTIONS)))
            assert [r.answer for r in results] == list(QUESTIONS.values())

    asyncio.run(main())


def test_one_agent_serves_many_threads_of_a_service(db_url):
    jobs = [(q, f"thread-{i}-{n}") for n in range(4) for i, q in enumerate(QUESTIONS)]
    with Agent(db=db_url, model="offline") as agent, ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: agent.reason(job[0], thread=job[1]), jobs))
    assert [r.answer for r in results] == [QUESTIONS[q] for q, _ in jobs]
    assert len({r.thread_id for r in results}) == len(jobs)


def test_an_agent_is_used_inside_its_with_block_and_can_be_entered_again(db_url):
    """Outside its `with` block an Agent says so (it raised AttributeError before it was entered); entered again
    after it closed, it runs on the new connection (its graphs had kept the closed one: "Cannot operate on a
    closed database")."""
    agent = Agent(db=db_url, model="offline")
    with pytest.raises(NotOpen, match="not open: use it inside `with Agent"):
        agent.reason("What is 2+3?", thread="n1")
    with agent:
        assert agent.reason("What is 2+3?", thread="n1").answer == "5"
        with pytest.raises(AgentError, match="open already"), agent:
            pass
        assert agent.result("n1").answer == "5"  # the failed second entry left the open one as it was
    with pytest.raises(NotOpen):
        agent.history("n1")
    with agent:
        assert agent.reason("What is 2+4?", thread="n2").answer == "6"
        assert sorted(t.thread_id for t in agent.threads()) == ["n1", "n2"]

    async def main():
        agent = AsyncAgent(db=db_url, model="offline")
        with pytest.raises(NotOpen):
            await agent.reason("What is 3+3?", thread="n3")
        for question, thread, answer in [("What is 3+3?", "n3", "6"), ("What is 3+4?", "n4", "7")]:
            async with agent:
                assert (await agent.reason(question, thread=thread)).answer == answer
        with pytest.raises(NotOpen):
            await agent.result("n4")

        async def use(question: str, pause: float):
            async with agent:
                await asyncio.sleep(pause)
                return (await agent.reason(question, thread=question)).answer

        # Both entries passed the check while the first still opened: the second's saver replaced the first's,
        # and the first's exit closed both ("no active connection").
        outcomes = await asyncio.gather(use("What is 1+1?", 0.2), use("What is 2+1?", 0.5), return_exceptions=True)
        assert outcomes[0] == "2" and isinstance(outcomes[1], AgentError) and "open already" in str(outcomes[1])
        async with agent:
            assert (await agent.result("What is 1+1?")).answer == "2"

    asyncio.run(main())


def test_arguments_of_the_wrong_type_are_bad_input_not_python_errors(db_url, tmp_path):
    """Found trying the API: each of these raised AttributeError or TypeError from deep inside; on_checkpoint=None,
    as the README writes the signatures, raised "'NoneType' object is not callable"."""
    import io

    from agent import BadInput, RetentionPolicy

    with Agent(db=db_url, model="offline") as agent:
        agent.reason("What is 2*3?", thread="y")
        at = agent.history("y")[2].checkpoint_id
        calls = {
            "the question must be text (str), not int": lambda: agent.reason(123, thread="x"),
            "the question must be text (str), not bytes": lambda: agent.reason(b"1+1", thread="x"),
            "the thread id must be text (str), not int": lambda: agent.reason("What is 1+1?", thread=5),
            "the checkpoint id must be text (str), not int": lambda: agent.state("y", 5),
            "limit must be a whole number (int), not str": lambda: agent.history("y", limit="5"),
            "values must be a dict of path -> value": lambda: agent.fork("y", at, values=[("plan.1", "x")]),
            "export writes to a file open for text": lambda: agent.export("backup.jsonl"),
            "threads must be a list of thread ids": lambda: agent.export(io.StringIO(), "y"),
            "the file must be a path": lambda: agent.import_file(5),
            "renames must be a dict": lambda: agent.import_file("x.jsonl", renames=[("a", "b")]),
            "renames must be a dict of old -> new thread id (texts), not {'y': ''}":
                lambda: agent.import_file("x.jsonl", renames={"y": ""}),
            "(texts), not {'y': 5}": lambda: agent.import_file("x.jsonl", renames={"y": 5}),
            "threads must be a list of thread ids (e.g. ['t1']), not 5": lambda: agent.export(io.StringIO(), 5),
            "threads must be a list of thread ids (e.g. ['t1']), not ''": lambda: agent.export(io.StringIO(), ""),
        }
        for message, call in calls.items():
            with pytest.raises(BadInput, match=re.escape(message)):
                call()
        out = io.StringIO()
        assert agent.export(out, ["y"], on_checkpoint=None).checkpoints == len(agent.history("y")) == 5
        (tmp_path / "y.jsonl").write_text(out.getvalue())
        assert agent.import_file(tmp_path / "y.jsonl", renames={"y": "z"}, on_checkpoint=None).threads == ["z"]
        assert agent.prune(RetentionPolicy(keep=2), thread="z").checkpoints == 3
        assert agent.result("z").answer == "6"


def test_an_async_run_cancelled_is_interrupted_and_resumes_without_repeating_a_call(db_url, llm):
    """Found trying the API: a run cancelled by asyncio (a timeout, task.cancel()) in the middle of a model call
    was `failed` with the error "CancelledError()" - LangGraph records it as the task's error - where Ctrl+C
    leaves `interrupted`."""
    question = "What is " + "+".join(str(n) for n in range(1, 41)) + "?"
    llm.delay = 0.2

    async def main():
        async with AsyncAgent(db=db_url, model="openai:gpt-4o-mini") as agent:
            steps = 0

            def on_event(event) -> None:
                nonlocal steps
                steps += event.kind == "step"
                if steps == 5:  # while the sixth step's model call is on its way
                    asyncio.get_running_loop().call_later(0.1, run.cancel)

            run = asyncio.ensure_future(agent.reason(question, thread="c", on_event=on_event))
            with pytest.raises(asyncio.CancelledError):
                await run
            stopped = await agent.result("c")
            assert (stopped.status, stopped.error) == ("interrupted", None)
            assert 5 <= sum(s.result is not None for s in stopped.steps) < 39
            assert [t.status for t in await agent.threads()] == ["interrupted"]
            llm.delay = 0
            done = await agent.reason(question, thread="c")
            assert done.answer == str(sum(range(1, 41))) and done.usage.llm_calls == 1 + 39 + 1

    asyncio.run(main())


def test_an_async_agent_used_from_another_event_loop_says_so(db_url):
    """Found trying the API: used from a second loop while its own ran, an AsyncAgent raised asyncio's "bound to
    a different event loop" - and on Postgres its own loop's runs waited out the pool's timeout."""
    import threading

    agent = AsyncAgent(db=db_url, model="offline")
    opened, finished = threading.Event(), threading.Event()
    answers = []

    async def owner():
        async with agent:
            opened.set()
            answers.append((await agent.reason("What is 1+1?", thread="o1")).answer)
            await asyncio.to_thread(finished.wait, 60)
            answers.append((await agent.reason("What is 1+2?", thread="o2")).answer)

    thread = threading.Thread(target=asyncio.run, args=(owner(),))
    thread.start()
    try:
        assert opened.wait(60)
        with pytest.raises(AgentError, match="opened on another event loop"):
            asyncio.run(agent.reason("What is 2+2?", thread="x"))
    finally:
        finished.set()
        thread.join(60)
    assert answers == ["2", "3"]  # its own loop went on as before


def test_a_fork_whose_model_cannot_be_used_writes_nothing(db_url, monkeypatch):
    """The configured model is checked when a run uses it (not when the Agent is made: reading needs no key),
    so a fork checked it only after writing its edit, which then never ran."""
    from agent import ModelError

    with Agent(db=db_url, model="offline") as agent:
        agent.reason("What is 2*3+4?", thread="t1")
        rows = agent.history("t1")
    for spec, message in (("openai:gpt-4o-mini", "OPENAI_API_KEY is not set"), ("bogus", "unknown model")):
        monkeypatch.setenv("AGENT_MODEL", spec)  # and no OPENAI_API_KEY
        with Agent(db=db_url) as agent:
            with pytest.raises(ModelError, match=message):
                agent.fork("t1", rows[2].checkpoint_id, {"question": "What is 6*7?"})
            assert len(agent.history("t1")) == len(rows)
    monkeypatch.setenv("AGENT_MODEL", "openai:gpt-4o-mini")
    with Agent(db=db_url) as agent:  # a fork that runs nothing needs no key
        assert agent.fork("t1", rows[2].checkpoint_id, {"question": "What is 6*7?"}, run=False).status == "interrupted"


def test_open_saver_yields_a_ready_langgraph_saver(db_url):
    with savers.open_saver(db_url) as saver:
        assert isinstance(saver, BaseCheckpointSaver)
        assert list(saver.list({"configurable": {"thread_id": "none"}})) == []

    async def main():
        async with savers.open_async_saver(db_url) as saver:
            assert isinstance(saver, BaseCheckpointSaver)
            assert [c async for c in saver.alist({"configurable": {"thread_id": "none"}})] == []

    asyncio.run(main())


def test_memory_url_runs_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Agent(db="memory://") as agent:
        assert agent.reason("What is 6*7?", thread="m").answer == "42"
    assert list(tmp_path.iterdir()) == []


def test_a_failed_model_call_is_recorded_and_resumable(db_url, llm):
    """The endpoint disappears mid-run: status failed with the error, then resume finishes the thread."""
    import os

    good = os.environ["OPENAI_BASE_URL"]
    with Agent(db=db_url, model="openai:gpt-4o-mini") as agent:
        os.environ["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
        agent._core._graphs.clear()
        failed = agent.reason("What is 2*21?", thread="f")
        assert failed.status == "failed" and "Connection" in failed.error
        assert agent.result("f").status == "failed"
        os.environ["OPENAI_BASE_URL"] = good
        agent._core._graphs.clear()
        done = agent.resume("f")
    assert done.status == "done" and done.answer == "42"
