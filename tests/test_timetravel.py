"""Time-travel debugging from the stored record: history, show, diff, replay, fork with edits, branch.

Model calls are counted at the HTTP test server, so "paying only for what changed" is measured, not assumed.
"""

import asyncio
import json

import pytest

from agent import Agent, AsyncAgent, BadInput, CheckpointNotFound, ThreadExists
from agent.api import assignments_from

QUESTION = "What is 2*3+4*5-6?"  # four steps: 2*3, 4*5, r1+r2, r3-6 -> 20
MODEL = "openai:gpt-4o-mini"


@pytest.fixture
def finished(db_url, llm):
    """A thread t1 that ran to its answer on the HTTP test model, and an Agent on its database."""
    with Agent(db=db_url, model=MODEL) as agent:
        result = agent.reason(QUESTION, thread="t1")
        assert result.answer == "20" and len(llm.requests) == 6
        yield agent


def by_node(agent, thread, node):
    return [row for row in agent.history(thread) if row.node == node]


def test_history_lists_every_checkpoint_with_parent_links(finished):
    rows = finished.history("t1")
    assert [r.node for r in rows] == ["input", "input", "analyze", "execute", "execute", "execute", "execute",
                                      "validate"]
    assert [r.step for r in rows] == list(range(-1, 7))
    assert rows[0].parent_checkpoint_id is None
    for parent, child in zip(rows, rows[1:]):
        assert child.parent_checkpoint_id == parent.checkpoint_id
    assert [r.head for r in rows] == [False] * 7 + [True]
    assert rows[3].summary == "step 1 → 6" and rows[-1].next == [] and rows[2].next == ["execute"]


def test_replay_of_a_finished_thread_makes_no_model_call_and_keeps_old_history(finished, llm):
    before = finished.history("t1")
    replayable = [row for row in before if row.next]
    for row in replayable:
        result = finished.replay("t1", row.checkpoint_id[:16])
        assert result.answer == "20" and result.status == "done"
    assert len(llm.requests) == 6  # every reply came from the cache
    after = finished.history("t1")
    assert {r.checkpoint_id: r.summary for r in before}.items() <= {r.checkpoint_id: r.summary for r in after}.items()
    forks = [r for r in after if r.source == "fork"]
    assert sorted(f.parent_checkpoint_id for f in forks) == sorted(r.checkpoint_id for r in replayable)
    assert finished.result("t1").usage.cached_calls > 0


def test_replay_fresh_asks_the_model_again(finished, llm):
    start = by_node(finished, "t1", "analyze")[0]
    finished.replay("t1", start.checkpoint_id, fresh=True)
    assert llm.tasks()[6:] == ["StepResult"] * 4 + ["Verdict"]


def test_fork_that_edits_step_k_pays_only_for_step_k_onwards(finished, llm):
    # the checkpoint after step 1 ran: the next call is step 2. Edit step 2 into an equivalent operation.
    after_step_1 = by_node(finished, "t1", "execute")[0]
    result = finished.fork("t1", after_step_1.checkpoint_id, {"plan.2": "Multiply 5 by 4"})
    assert result.answer == "20" and result.validation["ok"]
    new_calls = llm.requests[6:]
    assert [r["_task"] for r in new_calls] == ["StepResult"] * 3 + ["Verdict"]  # steps 2, 3, 4 and the check
    assert "Carry out step 2: Multiply 5 by 4" in new_calls[0]["messages"][-1]["content"]
    assert result.steps[1].description == "Multiply 5 by 4"
    edit = next(r for r in finished.history("t1") if r.source == "update")
    assert edit.edit == {"plan.2": "Multiply 5 by 4"} and edit.parent_checkpoint_id == after_step_1.checkpoint_id


def test_fork_with_a_wrong_step_is_caught_and_revised(finished, llm):
    after_analyze = by_node(finished, "t1", "analyze")[0]
    result = finished.fork("t1", after_analyze.checkpoint_id[:15], {"plan.1": "Multiply 2 by 4"})
    assert result.answer == "20" and result.usage.cached_calls >= 4  # the revised plan's steps come from cache
    rejected = [r for r in finished.history("t1") if r.summary.startswith("revisions = 1")]
    assert len(rejected) == 1


def test_fork_no_run_records_the_edit_and_resume_runs_it(finished, llm):
    last = finished.history("t1")[-1]
    edited = finished.fork("t1", last.checkpoint_id, {"question": "What is 6*7?"}, run=False)
    assert edited.status == "interrupted" and edited.next == ["analyze"] and len(llm.requests) == 6
    assert finished.resume("t1").answer == "42"


def test_fork_takes_a_number_where_text_goes_as_its_text_and_refuses_an_empty_plan(finished, llm):
    """Found trying the README: `--set results.1=6` was refused ("'results' must be a list of texts, not [6, ...]"),
    and `--set 'plan=[]'` ended the thread "done" with no answer for good."""
    executed, final = by_node(finished, "t1", "execute"), by_node(finished, "t1", "validate")[-1]
    edited = finished.fork("t1", executed[0].checkpoint_id, {"results.1": 7}, run=False)
    assert [s.result for s in edited.steps][:1] == ["7"]
    assert finished.fork("t1", final.checkpoint_id, {"answer": 21.5}, run=False).answer == "21.5"
    with pytest.raises(BadInput, match="'plan' must keep at least one step"):
        finished.fork("t1", by_node(finished, "t1", "analyze")[0].checkpoint_id, {"plan": []})
    with pytest.raises(BadInput, match="'plan' must keep at least one step"):  # where it was empty already
        finished.fork("t1", finished.history("t1")[1].checkpoint_id, {"plan": []}, as_node="analyze")
    typed = finished.fork("t1", executed[0].checkpoint_id, assignments_from(["results.1=1e5"]), run=False)
    assert [s.result for s in typed.steps][:1] == ["1e5"]  # as typed (the JSON number read back "100000.0")
    assert len(llm.requests) == 6


def test_a_thread_is_replayed_the_way_its_model_was_asked_for_structured_output(db_url, llm):
    """Found trying the CLI: run with --structured-output function_calling, a thread replayed without the flag
    asked in JSON-schema form - other requests than the stored replies': paid for again."""
    with Agent(db=db_url, model=MODEL, structured_output="function_calling") as agent:
        assert agent.reason(QUESTION, thread="fc").answer == "20" and len(llm.requests) == 6
        step0 = by_node(agent, "fc", "input")[-1]
    with Agent(db=db_url) as agent:
        assert agent.replay("fc", step0.checkpoint_id).answer == "20"
        assert len(llm.requests) == 6  # every reply from the cache
        assert agent.fork("fc", step0.checkpoint_id, {"question": "What is 6*7?"}).answer == "42"
    assert {r.get("tools", [{}])[0].get("type") for r in llm.requests} == {"function"}  # never asked otherwise
    with Agent(db=db_url, structured_output="json_schema") as agent:  # set now: it wins
        assert agent.replay("fc", step0.checkpoint_id, fresh=True).answer == "20"
    assert llm.requests[-1].get("response_format", {}).get("type") == "json_schema"


def test_prune_keeps_the_replies_a_thread_paid_for(finished, llm):
    """prune rewrites a thread through an overwriting import, whose delete of the old thread took its replies
    from the reply cache too: a replay from a kept checkpoint paid for them again."""
    from agent import RetentionPolicy

    kept = by_node(finished, "t1", "execute")[-1]
    assert finished.prune(RetentionPolicy(keep=3)).checkpoints == 5
    assert finished.replay("t1", kept.checkpoint_id).answer == "20"
    assert len(llm.requests) == 6  # answered from the cache
    finished.delete("t1")  # a delete does take them
    assert finished.reason(QUESTION, thread="t1").answer == "20" and len(llm.requests) == 12


def test_branch_makes_an_independent_thread(finished, llm):
    original = finished.history("t1")
    at = by_node(finished, "t1", "execute")[1]  # after step 2
    made = finished.branch("t1", at.checkpoint_id, "t2")
    assert made.thread_id == "t2" and made.status == "interrupted" and made.head == at.checkpoint_id
    copied = finished.history("t2")
    assert [r.checkpoint_id for r in copied] == [r.checkpoint_id for r in original[:5]]
    assert all(r.branch_of == f"t1@{at.checkpoint_id}" for r in copied)
    assert finished.resume("t2").answer == "20"
    finished.fork("t2", copied[-1].checkpoint_id, {"plan.3": "Add the result of step 2 and the result of step 1"})
    assert [r.checkpoint_id for r in finished.history("t1")] == [r.checkpoint_id for r in original]
    assert len(llm.requests) == 6 + 3  # t2's own edit paid for its changed calls; the rest came from cache
    with pytest.raises(ThreadExists):
        finished.branch("t1", at.checkpoint_id, "t2")


def test_diff_field_by_field_across_branches_and_threads(finished):
    rows = finished.history("t1")
    diff = finished.diff("t1", rows[2].checkpoint_id, rows[4].checkpoint_id)
    changes = {c.path: (c.kind, c.old, c.new) for c in diff.changes}
    assert changes["results.1"] == ("added", None, "6") and changes["results.2"] == ("added", None, "20")
    assert changes["draft"] == ("changed", "", "20")
    finished.branch("t1", rows[4].checkpoint_id, "other")
    finished.fork("other", rows[4].checkpoint_id, {"results.2": "21"}, run=False)
    across = finished.diff("t1", rows[4].checkpoint_id, to_thread="other")
    assert {c.path: c.new for c in across.changes}["results.2"] == "21"


def test_checkpoint_prefixes_work_like_git(finished):
    rows = finished.history("t1")
    shared = rows[0].checkpoint_id[:4]
    with pytest.raises(CheckpointNotFound, match="ambiguous.*could be"):
        finished.state("t1", shared)
    with pytest.raises(CheckpointNotFound, match="no checkpoint 'zzz'"):
        finished.state("t1", "zzz")
    assert finished.state("t1", rows[3].checkpoint_id[:20]).checkpoint.checkpoint_id == rows[3].checkpoint_id


@pytest.mark.parametrize("values, message", [
    ({"plan.9": "x"}, "plan has 4 items"),
    ({"colour": "x"}, "not a field an edit can set"),
    ({"question.1": "x"}, "is a value"),
    ({}, "nothing to change"),
    # Found trying the CLI: these were taken - the last recorded as an edit that changed nothing.
    ({"question": [1, 2]}, "'question' must be text"),
    ({"plan.2": 7}, "'plan' must be a list of texts"),
    ({"revisions": -5}, "'revisions' must be a whole number"),
    ({"question": " "}, "'question' must not be empty"),
    ({"usage.llm_calls": 999}, "'usage' is not a field an edit can set"),
])
def test_bad_edits_change_nothing(finished, values, message):
    count = len(finished.history("t1"))
    with pytest.raises(BadInput, match=message):
        finished.fork("t1", finished.history("t1")[3].checkpoint_id, values)
    assert len(finished.history("t1")) == count


def test_an_edit_at_a_runs_input_checkpoint_is_refused_before_anything_runs(finished):
    """Found trying the CLI: a fork from step -1 ran, failed on KeyError 'question', and left the thread's head
    a failed branch that every resume failed again."""
    rows = finished.history("t1")
    assert rows[0].step == -1
    with pytest.raises(BadInput, match="holds no state yet"):
        finished.fork("t1", rows[0].checkpoint_id, {"plan.1": "Add 1 and 2"})
    assert len(finished.history("t1")) == len(rows)
    assert finished.threads()[0].status == "done"


def test_threads_lists_status_and_branches(finished):
    finished.replay("t1", by_node(finished, "t1", "analyze")[0].checkpoint_id)
    [info] = finished.threads()
    assert (info.thread_id, info.status, info.answer, info.branches) == ("t1", "done", "20", 1)
    assert info.checkpoints == len(finished.history("t1"))


def test_async_agent_time_travels_the_same_way(db_url, llm):
    async def main():
        async with AsyncAgent(db=db_url, model=MODEL) as agent:
            await agent.reason(QUESTION, thread="a")
            rows = await agent.history("a")
            await agent.replay("a", rows[2].checkpoint_id)
            forked = await agent.fork("a", rows[3].checkpoint_id, {"plan.2": "Multiply 5 by 4"})
            made = await agent.branch("a", rows[3].checkpoint_id, "b")
            diff = await agent.diff("a", rows[3].checkpoint_id, to_thread="b")
            view = await agent.state("a", rows[3].checkpoint_id[:18])
            return forked, made, diff, view, await agent.threads(), await agent.threads(limit=1)

    forked, made, diff, view, threads, newest = asyncio.run(main())
    assert forked.answer == "20" and made.status == "interrupted" and diff.changes == []
    assert view.checkpoint.node == "execute" and view.result.steps[0].result == "6"
    assert sorted(t.thread_id for t in threads) == ["a", "b"] and newest == threads[:1]
    assert len(llm.requests) == 6 + 4


# -- the same through the CLI, as a person or a script would use it ------------------------------------------


@pytest.fixture
def run(cli, llm, db_url):
    """The CLI on this test's database, with the HTTP test model."""
    return lambda *args: cli(*args, "--db", db_url, env=llm.env())


def test_cli_time_travel_session(run, llm):
    assert run("reason", QUESTION, "--thread", "t1", "--model", MODEL).returncode == 0
    rows = json.loads(run("history", "--thread", "t1", "--json").stdout)
    assert {"checkpoint_id", "parent_checkpoint_id", "step", "node", "source", "created_at", "next"} <= set(rows[0])
    ids = {r["checkpoint_id"] for r in rows}
    assert all(r["parent_checkpoint_id"] in ids for r in rows[1:])

    tree = run("history", "--thread", "t1")
    assert tree.returncode == 0 and "← head" in tree.stdout and "step 1 → 6" in tree.stdout

    analyze = next(r for r in rows if r["node"] == "analyze")["checkpoint_id"][:16]
    replayed = run("replay", "--thread", "t1", "--checkpoint", analyze, "--json")
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["answer"] == "20"
    assert len(llm.requests) == 6

    forked = run("fork", "--thread", "t1", "--checkpoint", analyze, "--set", "plan.4=Subtract 5 from the result of step 3",
                 "--json")
    assert forked.returncode == 0, forked.stderr
    assert json.loads(forked.stdout)["answer"] == "20"  # 21 was rejected by the check and revised
    assert "⑂ edit" in run("history", "--thread", "t1").stdout

    shown = json.loads(run("show", "--thread", "t1", "--checkpoint", analyze, "--json").stdout)
    assert shown["node"] == "analyze" and shown["next"] == ["execute"] and len(shown["values"]["plan"]) == 4

    diffed = run("diff", "--thread", "t1", "--from", analyze)
    assert diffed.returncode == 0 and "results.4" in diffed.stdout

    branched = run("branch", "--thread", "t1", "--checkpoint", analyze, "--to", "t2", "--json")
    assert branched.returncode == 0 and json.loads(branched.stdout)["status"] == "interrupted"
    resumed = json.loads(run("resume", "--thread", "t2", "--json").stdout)
    assert resumed["answer"] == "20" and resumed["usage"]["cached_calls"] == 5

    threads = json.loads(run("threads", "--json").stdout)
    assert {t["thread_id"]: t["branches"] for t in threads} == {"t1": 2, "t2": 0}
    # --limit: the threads updated last (t2, resumed after t1's last run), and only they are read.
    newest = run("threads", "--limit", "1")
    assert newest.stdout.splitlines()[0].strip() == "the 1 thread updated last" and "t2" in newest.stdout
    assert "t1" not in newest.stdout.split("\n", 1)[1]
    assert [t["thread_id"] for t in json.loads(run("threads", "-n", "1", "--json").stdout)] == ["t2"]
    assert [t["thread_id"] for t in json.loads(run("threads", "-n", "5", "--json").stdout)] == ["t2", "t1"]
    refused = run("threads", "--limit", "0")
    assert refused.returncode == 2 and refused.stderr.strip() == ("error: --limit 0 shows nothing: give 1 or more, "
                                                                  "or leave it out for every thread")


def test_cli_bad_time_travel_input_is_one_line_and_changes_nothing(run, llm):
    assert run("reason", QUESTION, "--thread", "t1", "--model", MODEL).returncode == 0
    rows = json.loads(run("history", "--thread", "t1", "--json").stdout)
    last = rows[-1]["checkpoint_id"]
    cases = [
        (("history", "--thread", "nope"), "no thread 'nope'"),
        (("show", "--thread", "t1", "--checkpoint", "1"), "ambiguous"),
        (("show", "--thread", "t1", "--checkpoint", "abc"), "no checkpoint 'abc'"),
        (("fork", "--thread", "t1", "--checkpoint", last, "--set", "plan.7=x"), "plan has 4 items"),
        (("fork", "--thread", "t1", "--checkpoint", last, "--set", "noequals"), "is not path=value"),
        (("fork", "--thread", "t1", "--checkpoint", last, "--set", "plan.1=x", "--as-node", "dance"), "not a node"),
        (("replay", "--thread", "t1", "--checkpoint", last), "nothing runs after it"),
        (("branch", "--thread", "t1", "--checkpoint", last, "--to", "t1"), "already exists"),
        (("diff", "--thread", "t1", "--from", last, "--to-thread", "ghost"), "no thread 'ghost'"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, (args, result.stderr)
    assert json.loads(run("history", "--thread", "t1", "--json").stdout) == rows
    assert len(llm.requests) == 6
