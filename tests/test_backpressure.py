"""Backpressure: with durability="async", a run against a slow database keeps at most max_pending_checkpoints
checkpoints made but unsaved, and its history is whole and in order. The database is real; the test harness
slows its saver down (each put and put_writes first sleeps), and counts, at every model call, how many
checkpoints the run has made and how many the database has. Memory and time are in bench/backpressure.py."""

import asyncio
import threading
import time

import pytest

from agent import Agent, AsyncAgent, ConfigError
from agent.config import Settings, load_settings

MODEL = "openai:gpt-4o-mini"
DELAY = 0.03  # seconds each put and put_writes waits: a database much slower than a step
BOUND = 2


def question(first: int, terms: int = 12) -> str:
    """A question the model answers in one plan step per addition (terms - 1 of them)."""
    return "What is " + "+".join(str(n) for n in range(first, first + terms)) + "?"


class SlowDatabase:
    """Throttles a real saver in place and counts the checkpoints it has saved."""

    def __init__(self, saver, monkeypatch, delay: float = DELAY):
        self.saved = 0
        self._lock = threading.Lock()
        put, put_writes = saver.put, saver.put_writes
        aput, aput_writes = saver.aput, saver.aput_writes

        def slow_put(*args, **kwargs):
            time.sleep(delay)
            stored = put(*args, **kwargs)
            self._count()
            return stored

        def slow_put_writes(*args, **kwargs):
            time.sleep(delay)
            return put_writes(*args, **kwargs)

        async def slow_aput(*args, **kwargs):
            await asyncio.sleep(delay)
            stored = await aput(*args, **kwargs)
            self._count()
            return stored

        async def slow_aput_writes(*args, **kwargs):
            await asyncio.sleep(delay)
            return await aput_writes(*args, **kwargs)

        for name, method in (("put", slow_put), ("put_writes", slow_put_writes), ("aput", slow_aput),
                             ("aput_writes", slow_aput_writes)):
            monkeypatch.setattr(saver, name, method)

    def _count(self) -> None:
        with self._lock:
            self.saved += 1


class ModelCalls:
    """At each request the test model answers: how many checkpoints the database had saved by then."""

    def __init__(self, llm, monkeypatch, database: SlowDatabase):
        self.saved_at: list[int] = []
        answer = llm._answer

        def counting(*args, **kwargs):
            self.saved_at.append(database.saved)
            return answer(*args, **kwargs)

        monkeypatch.setattr(llm, "_answer", counting)

    def unsaved(self, history) -> list[int]:
        """Checkpoints made but not saved at each call. Call c runs in super-step c (history says so: one
        node, one call per step from 1 on), after the checkpoints of steps -1 .. c-1 were made."""
        steps = [row.step for row in history]
        return [sum(1 for s in steps if s < call) - saved for call, saved in enumerate(self.saved_at, start=1)]


def assert_whole_and_in_order(history, result, reference) -> None:
    """Every checkpoint of the run is there, each the child of the one before, as a sync run writes them."""
    assert [(row.step, row.node) for row in history] == [(row.step, row.node) for row in reference]
    assert [row.parent_checkpoint_id for row in history[1:]] == [row.checkpoint_id for row in history[:-1]]
    assert [row.checkpoint_id for row in history] == sorted(row.checkpoint_id for row in history)
    assert history[-1].head and result.status == "done"


def run(db_url, llm, monkeypatch, *, first: int, delay: float = DELAY, **settings):
    with Agent(db=db_url, model=MODEL, durability="async", **settings) as agent:
        calls = ModelCalls(llm, monkeypatch, SlowDatabase(agent._core.saver, monkeypatch, delay))
        result = agent.reason(question(first), thread=f"t{first}")
        history = agent.history(f"t{first}")
    return result, history, calls.unsaved(history)


async def arun(db_url, llm, monkeypatch, *, first: int, delay: float = DELAY, **settings):
    async with AsyncAgent(db=db_url, model=MODEL, durability="async", **settings) as agent:
        calls = ModelCalls(llm, monkeypatch, SlowDatabase(agent._core.saver, monkeypatch, delay))
        result = await agent.reason(question(first), thread=f"t{first}")
        history = await agent.history(f"t{first}")
    return result, history, calls.unsaved(history)


def test_a_slow_database_slows_the_run_instead_of_piling_up_unsaved_checkpoints(db_url, llm, monkeypatch):
    result, history, unsaved = run(db_url, llm, monkeypatch, first=1, max_pending_checkpoints=1)
    assert len(unsaved) == 13 and max(unsaved) <= 1
    # Without a bound (stock LangGraph) the run gets ahead of the database. Here only as far as LangGraph's
    # thread pool lets it: the agent streams "custom" events, so each step waits for a worker behind the saves.
    _, _, unbounded = run(db_url, llm, monkeypatch, first=2, max_pending_checkpoints=1000)
    assert max(unbounded) > 1

    with Agent(db=db_url, model=MODEL) as agent:  # durability="sync", as the agent runs by default
        reference = agent.reason(question(1), thread="sync")  # the same requests: answered from the reply cache
        assert_whole_and_in_order(history, result, agent.history("sync"))
    assert result.answer == reference.answer == str(sum(range(1, 13)))
    assert (result.steps, result.validation) == (reference.steps, reference.validation)


def test_async_agent_keeps_the_bound_where_stock_langgraph_has_none(db_url, llm, monkeypatch):
    result, history, unsaved = asyncio.run(arun(db_url, llm, monkeypatch, first=3, max_pending_checkpoints=BOUND))
    assert len(unsaved) == 13 and max(unsaved) <= BOUND
    # How far an unbounded run gets ahead depends on how fast the model answers against the saves; on a busy
    # machine (tests in parallel, other work beside them) a call takes tens of ms, so the contrast uses a
    # database four times as slow (twice as slow, it got 5 and 6 ahead on a loaded CI machine).
    _, _, unbounded = asyncio.run(arun(db_url, llm, monkeypatch, first=4, delay=4 * DELAY,
                                       max_pending_checkpoints=1000))
    assert max(unbounded) > BOUND + 4

    with Agent(db=db_url, model=MODEL) as agent:
        reference = agent.reason(question(3), thread="sync")
        assert_whole_and_in_order(history, result, agent.history("sync"))
    assert result.answer == reference.answer == str(sum(range(3, 15)))


def test_durability_and_its_bound_are_settings(tmp_path):
    assert (Settings().durability, Settings().max_pending_checkpoints) == ("sync", 2)
    (tmp_path / "agent.toml").write_text('durability = "async"\nmax_pending_checkpoints = 4\n')
    settings = load_settings(directory=tmp_path, environ={})
    assert (settings.durability, settings.max_pending_checkpoints) == ("async", 4)
    assert load_settings(directory=tmp_path, environ={"AGENT_MAX_PENDING_CHECKPOINTS": "8"}).max_pending_checkpoints == 8
    with pytest.raises(ConfigError, match="environment: durability"):
        load_settings(directory=tmp_path, environ={"AGENT_DURABILITY": "exit"})
    with pytest.raises(ConfigError, match="environment: max_pending_checkpoints"):
        load_settings(directory=tmp_path, environ={"AGENT_MAX_PENDING_CHECKPOINTS": "0"})
