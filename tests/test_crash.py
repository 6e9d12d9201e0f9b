"""Crash and resume with a real process: SIGKILL mid-call or Ctrl+C, then resume; no completed call is repeated.

Calls are counted at the HTTP test server, so "not repeated" is measured where the model would bill it.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import savers
from savers.locks import locks_for

QUESTION = "What is 17*23+4?"
CALLS = 4  # analyze, two steps, validate


def start_and_hold(cli, llm, db_url, number):
    """Start a run, and wait until its `number`-th model call is in flight."""
    llm.hold(number)
    proc = cli.popen("reason", QUESTION, "--thread", "t1", "--db", db_url, "--model", "openai:gpt-4o-mini",
                     env=llm.env())
    if not llm.held.wait(60):
        proc.kill()
        pytest.fail(f"call {number} never arrived: {proc.communicate()}")
    return proc


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4], ids=["analyze", "step-1", "step-2", "validate"])
@pytest.mark.parametrize("how", ["resume", "reason-again"])
def test_sigkill_mid_call_then_resume_repeats_only_the_call_in_flight(cli, llm, db_url, kill_at, how):
    proc = start_and_hold(cli, llm, db_url, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    llm.release.set()  # the held reply now goes to a dead socket
    before = llm.bodies()
    assert len(before) == kill_at
    if how == "resume":  # the dead run's lease has not run out yet, but its process is gone: not running
        assert json.loads(cli("threads", "--db", db_url, "--json").stdout)[0]["status"] == "interrupted"

    args = ("resume", "--thread", "t1") if how == "resume" else ("reason", QUESTION, "--thread", "t1")
    result = cli(*args, "--db", db_url, "--json", env=llm.env())
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "done" and data["answer"] == "395"

    after = llm.bodies()
    assert len(after) == CALLS + 1  # every call once, plus the one that was in flight again
    for completed in before[:-1]:
        assert after.count(completed) == 1
    assert after.count(before[-1]) == 2
    assert data["usage"]["llm_calls"] == CALLS  # the killed call was never recorded


def test_ctrl_c_says_where_it_stopped_exits_130_and_resumes(cli, llm, db_url):
    proc = start_and_hold(cli, llm, db_url, 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    llm.release.set()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert "Interrupted after 1 of 2 steps (next: execute)" in err
    assert "python -m agent resume --thread t1" in err

    result = cli("resume", "--thread", "t1", "--db", db_url, env=llm.env())
    assert result.returncode == 0, result.stderr
    assert "1 of 2 steps already done" in result.stdout
    assert "Answer: 395" in result.stdout
    assert len(llm.bodies()) == CALLS + 1


def test_a_step_killed_between_its_writes_and_its_checkpoint_is_resumed_not_taken_as_done(db_url):
    """LangGraph stores a finished step's writes, then the next checkpoint; a kill in between leaves `next`
    empty while the step is still pending. The thread must read as interrupted and resume to its answer."""
    from agent import Agent

    with Agent(db=db_url) as agent:
        agent.reason("What is 2*3+1?", thread="whole")
        after_analyze = agent.history("whole")[2]
        agent.branch("whole", after_analyze.checkpoint_id, "cut")
        saver = agent._core.saver  # write what the killed process had written: the step's writes only
        source = saver.get_tuple({"configurable": {"thread_id": "whole", "checkpoint_ns": "",
                                                   "checkpoint_id": after_analyze.checkpoint_id}})
        target = {"configurable": {"thread_id": "cut", "checkpoint_ns": "",
                                   "checkpoint_id": after_analyze.checkpoint_id}}
        [task_id] = {task for task, _, _ in source.pending_writes}
        saver.put_writes(target, [(channel, value) for _, channel, value in source.pending_writes], task_id)
        assert agent.result("cut").status == "interrupted"
        resumed = agent.reason("What is 2*3+1?", thread="cut")
        assert (resumed.status, resumed.answer, resumed.from_store) == ("done", "7", False)


def test_a_run_killed_but_not_yet_reaped_holds_its_thread_no_more(db_url, tmp_path):
    """kill -9 leaves a zombie until its parent waits for it (in a container whose first process does not
    reap, until the container stops): the signal check says alive, yet it runs no more. Its lease is not a
    run: listed as not running, and taken over at once by the next run."""
    root = Path(__file__).resolve().parent.parent
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import savers; from savers.locks import locks_for\n"
        "with savers.open_saver(sys.argv[2]) as saver, locks_for(saver).hold('t1'):\n"
        "    print('held', flush=True); time.sleep(600)"), str(root), db_url],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with savers.open_saver(db_url) as saver:
            locks = locks_for(saver)
            assert locks.running(["t1"]) == {"t1"}
            holder.kill()  # not waited for: a zombie
            for _ in range(100):
                if Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the killed process never became a zombie")
            assert locks.running(["t1"]) == set()
            with locks.hold("t1"):  # at once, not LEASE_S later
                assert locks.running(["t1"]) == {"t1"}
    finally:
        holder.kill()
        holder.wait()
