"""Reliability and cost under real conditions: retries, failures, budgets, one writer per thread, database
faults, and batch runs - with faults injected at the HTTP test server and a real Postgres restarted."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from agent import Agent, AsyncAgent, ThreadBusy

QUESTION = "What is 17*23+4?"
MODEL = "openai:gpt-4o-mini"


def test_rate_limits_are_retried_visibly_honouring_retry_after(cli, llm, db_url):
    llm.fail(429, times=2, headers={"Retry-After": "1"})
    started = time.monotonic()
    result = cli("reason", QUESTION, "--thread", "t1", "--db", db_url, "--model", MODEL, env=llm.env())
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 2  # two waits of Retry-After: 1
    assert "Retry 1/3 analyze:" in result.stdout and "RateLimitError" in result.stdout and "Retry 2/3" in result.stdout
    assert "(waiting 1.00s)" in result.stdout and "Answer: 395" in result.stdout


def test_server_errors_exhaust_retries_then_fail_and_resume_later(cli, llm, db_url):
    args = ("--db", db_url, "--model", MODEL, "--max-retries", "2", "--retry-delay", "0.01")
    assert cli("reason", "What is 2*3?", "--thread", "ok", *args, env=llm.env()).returncode == 0
    llm.fail(503, times=3)  # the first call and both retries
    result = cli("reason", QUESTION, "--thread", "t1", *args, env=llm.env())
    assert result.returncode == 1
    assert "run failed:" in result.stderr and "503" in result.stderr and "resume --thread t1" in result.stderr
    assert result.stdout.count("Retry ") == 2
    threads = {t["thread_id"]: t for t in json.loads(cli("threads", "--db", db_url, "--json").stdout)}
    assert threads["t1"]["status"] == "failed" and "503" in threads["t1"]["error"]
    shown = json.loads(cli("show", "--thread", "t1", "--db", db_url, "--json").stdout)
    assert shown["status"] == "failed" and shown["error"]
    resumed = cli("resume", "--thread", "t1", "--db", db_url, "--json", env=llm.env())
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["answer"] == "395"
    assert len(llm.answered()) == 3 + 4  # no answered call was asked again


def test_client_errors_are_not_retried(db_url, llm):
    llm.fail(400)
    with Agent(db=db_url, model=MODEL, retry_delay=0.01) as agent:
        result = agent.reason(QUESTION, thread="t1")
    assert result.status == "failed" and "400" in result.error
    assert len(llm.requests) == 1


def test_every_call_is_priced_and_a_budget_pauses_before_overspending(db_url, llm):
    with Agent(db=db_url, model=MODEL) as agent:
        full = agent.reason(QUESTION, thread="priced")
    per_call = full.usage.cost_usd / full.usage.llm_calls
    assert full.usage.cost_usd == pytest.approx(
        (full.usage.input_tokens * 0.15 + full.usage.output_tokens * 0.60) / 1e6)  # gpt-4o-mini's list price

    budget = per_call * 3  # room for some calls, not all four
    other = "What is 19*29+7?"  # not in the reply cache: every call is paid for
    with Agent(db=db_url, model=MODEL, budget=budget) as agent:
        paused = agent.reason(other, thread="t1")
        assert paused.status == "budget_exceeded" and "budget exceeded" in paused.error
        assert 1 <= paused.usage.llm_calls < 4 and paused.usage.cost_usd <= budget
        paid = paused.usage.llm_calls
        assert agent.resume("t1").status == "budget_exceeded"  # the same budget: still paused, no call made
        assert agent.threads()[0].status == "budget_exceeded"
    calls = len(llm.requests)
    with Agent(db=db_url, model=MODEL, budget=budget * 3) as agent:
        done = agent.resume("t1")
    assert done.status == "done" and done.answer == "558"
    assert len(llm.requests) == calls + 4 - paid and done.usage.llm_calls == 4  # nothing paid for twice


def test_a_checkpoint_where_a_budget_paused_the_run_replays_as_a_new_branch(db_url, llm):
    """Found trying the CLI: a replay from the checkpoint where a budget paused the run went on with a resume
    command, from that checkpoint itself, where the thread had already gone on once resumed: WriterConflict,
    every time."""
    with Agent(db=db_url, model=MODEL) as agent:
        per_call = agent.reason(QUESTION, thread="priced").usage.cost_usd / 4
    with Agent(db=db_url, model=MODEL, budget=per_call * 2.5) as agent:
        assert agent.reason("What is 19*29+7?", thread="t1").status == "budget_exceeded"
        paused_at = agent.history("t1")[-1]
    with Agent(db=db_url, model=MODEL, budget=per_call * 20) as agent:
        assert agent.resume("t1").answer == "558"
        calls = len(llm.requests)
        replayed = agent.replay("t1", paused_at.checkpoint_id)
        assert (replayed.status, replayed.answer, replayed.error) == ("done", "558", None)
        assert len(llm.requests) == calls  # the resumed run's replies, from the cache
        forks = [r for r in agent.history("t1") if r.source == "fork"]
        assert [r.parent_checkpoint_id for r in forks] == [paused_at.checkpoint_id]


def test_a_budget_caps_the_whole_thread_not_each_branch(db_url, llm):
    """Found trying the CLI: three forks of a thread each ran under a budget the thread had passed in all,
    since each counted only its own branch's spend."""
    with Agent(db=db_url, model=MODEL) as agent:
        first = agent.reason("What is 19*29+7?", thread="t1")
        step0 = next(r.checkpoint_id for r in agent.history("t1") if r.step == 0)
    spent = first.usage.cost_usd
    budget = spent * 2.2  # the first run's spend, and about one more run like it
    with Agent(db=db_url, model=MODEL, budget=budget) as agent:
        ran = agent.fork("t1", step0, {"question": "What is 23*31+5?"})
        assert ran.status == "done"  # room for one more run's calls
        paused = agent.fork("t1", step0, {"question": "What is 27*37+3?"})
        assert paused.status == "budget_exceeded"
        assert paused.usage.cost_usd < spent / 2  # its own branch had spent next to nothing: not what stopped it
        assert "budget exceeded" in paused.error
    thread_total = spent + (ran.usage.cost_usd - 0) + paused.usage.cost_usd  # forks start at step 0's $0
    assert thread_total <= budget


def test_budget_on_the_command_line(cli, llm, db_url):
    args = ("--db", db_url, "--model", MODEL)
    result = cli("reason", QUESTION, "--thread", "t1", *args, "--budget", "0.00001", env=llm.env())
    assert result.returncode == 1 and "budget exceeded" in result.stderr and "--budget" in result.stderr
    listed = cli("threads", "--db", db_url)
    assert "budget_exceeded" in listed.stdout and "$0.00" in listed.stdout  # paused before the first call
    resumed = cli("resume", "--thread", "t1", *args, "--budget", "1", "--json", env=llm.env())
    assert json.loads(resumed.stdout)["status"] == "done"


def test_a_second_run_on_a_busy_thread_gets_exit_3(cli, llm, db_url):
    llm.hold(2)
    first = cli.popen("reason", QUESTION, "--thread", "t1", "--db", db_url, "--model", MODEL, env=llm.env())
    try:
        assert llm.held.wait(30)
        second = cli("reason", QUESTION, "--thread", "t1", "--db", db_url, "--model", MODEL, env=llm.env())
        assert second.returncode == 3
        assert "thread 't1' is busy" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        fork = cli("fork", "--thread", "t1", "--checkpoint", "1", "--set", "plan.1=x", "--db", db_url, env=llm.env())
        assert fork.returncode == 3
        listed = json.loads(cli("threads", "--db", db_url, "--json").stdout)
        assert listed[0]["status"] == "running"
        other = cli("reason", "What is 6*7?", "--thread", "t2", "--db", db_url, "--model", MODEL, env=llm.env())
        assert other.returncode == 0  # other threads are not held up
    finally:
        llm.release.set()
        first.wait(timeout=60)
    assert first.returncode == 0
    assert json.loads(cli("threads", "--db", db_url, "--json").stdout)[-1]["status"] == "done"


def test_two_tasks_of_one_service_cannot_run_the_same_thread(db_url, llm):
    import asyncio

    llm.delay = 0.2

    async def main():
        async with AsyncAgent(db=db_url, model=MODEL) as agent:
            return await asyncio.gather(agent.reason(QUESTION, thread="same"), agent.reason(QUESTION, thread="same"),
                                        return_exceptions=True)

    outcomes = asyncio.run(main())
    assert sorted(type(o).__name__ for o in outcomes) == ["RunResult", "ThreadBusy"]


def test_a_lease_left_by_a_dead_process_is_taken_over_and_a_live_one_is_not(tmp_path):
    import sqlite3

    from savers.locks import HOST

    db = tmp_path / "agent.db"
    with Agent(db=f"sqlite:///{db}") as agent:
        agent.reason("What is 1+1?", thread="t")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    conn = sqlite3.connect(db)
    far = time.time() + 3600
    conn.execute("INSERT INTO agent_locks VALUES ('gone', 'x', ?, ?, ?)", (HOST, int(dead.stdout), far))
    conn.execute("INSERT INTO agent_locks VALUES ('elsewhere', 'y', 'other-host', 1, ?)", (far,))
    conn.execute("INSERT INTO agent_locks VALUES ('expired', 'z', 'other-host', 1, ?)", (time.time() - 1,))
    conn.commit()
    with Agent(db=f"sqlite:///{db}") as agent:
        assert {t for t in ("gone", "elsewhere", "expired") if agent._running([t])} == {"elsewhere"}
        assert agent.reason("What is 1+2?", thread="gone").answer == "3"
        assert agent.reason("What is 1+3?", thread="expired").answer == "4"
        with pytest.raises(ThreadBusy):
            agent.reason("What is 1+4?", thread="elsewhere")
    assert conn.execute("SELECT thread_id FROM agent_locks").fetchall() == [("elsewhere",)]


def test_different_threads_run_in_parallel_from_many_processes_on_postgres(cli, llm, pg, request, tmp_path):
    from conftest import fresh_db_url

    url = fresh_db_url("postgres", request, tmp_path)
    llm.gather(4)  # each process's first call waits until all four are at the model at once
    procs = [cli.popen("reason", QUESTION, "--thread", f"p{i}", "--db", url, "--model", MODEL, env=llm.env())
             for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    assert llm.gathered.is_set() and llm.max_in_flight == 4  # no process waited for another's run to end


def test_readers_never_see_database_is_locked_while_runs_write(cli, tmp_path):
    questions = tmp_path / "q.txt"
    questions.write_text("".join(f"What is {i}*{i + 1}+{i}?\n" for i in range(40)))
    writer = cli.popen("batch", str(questions), "--workers", "4")
    errors = []
    while writer.poll() is None:
        for args in (("threads", "--json"), ("history", "--thread", "q-1", "--json")):
            result = cli(*args)
            if "locked" in result.stderr or (result.returncode and "no thread" not in result.stderr
                                             and "no SQLite database" not in result.stderr):
                errors.append(result.stderr)
    assert writer.returncode == 0, writer.stderr.read()
    assert errors == []


def test_postgres_restart_mid_run_leaves_a_resumable_thread(pg, request, tmp_path, llm):
    from conftest import fresh_db_url

    if os.environ.get("AGENT_TEST_POSTGRES_URL"):
        pytest.skip("restarting needs the suite's own Postgres (AGENT_TEST_POSTGRES_URL names another)")
    url = fresh_db_url("postgres", request, tmp_path)
    with Agent(db=url, model=MODEL) as agent:
        llm.hold(3)
        outcome = {}
        run = threading.Thread(target=lambda: outcome.update(result=agent.reason(QUESTION, thread="t1")))
        run.start()
        assert llm.held.wait(30)
        pg.restart()  # every connection of the pool dies with the server
        llm.release.set()
        run.join(timeout=60)
        first = outcome["result"]
        assert first.status in ("done", "failed")  # failed cleanly, or the pool reconnected in time
        assert agent.resume("t1").answer == "395"  # the pool reconnects for the next run
        assert agent.reason("What is 6*7?", thread="t2").answer == "42"
    answered = [json.dumps(r["messages"]) for r in llm.answered()]
    assert len(answered) - len(set(answered)) <= 1  # at most the call in flight during the restart


def test_batch_of_200_killed_midway_resumes_without_running_any_question_twice(cli, llm, db_url, tmp_path):
    questions = tmp_path / "questions.jsonl"
    expected = {}
    with questions.open("w") as f:
        for i in range(200):
            a, b, c = i % 17 + 2, i % 13 + 3, i
            expected[f"q{i}"] = str(a * b + c)
            f.write(json.dumps({"id": f"q{i}", "question": f"What is {a}*{b}+{c}?"}) + "\n")
    output = tmp_path / "out.jsonl"
    args = ("batch", str(questions), "-o", str(output), "--workers", "4", "--db", db_url, "--model", MODEL)
    proc = cli.popen(*args, env=llm.env())
    while (output.read_text().count("\n") if output.exists() else 0) < 80:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows_before = output.read_text().count("\n")
    assert rows_before < 200

    resumed = cli(*args, "--json", env=llm.env())
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["skipped"] == rows_before and summary["done"] == 200 - rows_before
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(expected)  # one row per question, none twice
    assert [r for r in rows if r["status"] != "done" or r["answer"] != expected[r["id"]]] == []
    plans = [r["messages"][-1]["content"] for r in llm.requests if r["_task"] == "Plan"]
    # every question planned once (none was started over), but for plans in flight at the kill
    assert len(set(plans)) == 200 and len(plans) - 200 <= 4
    bodies = [json.dumps(r["messages"]) for r in llm.requests]
    assert len(bodies) - len(set(bodies)) <= 4  # at most the calls in flight at the kill, one per worker


def test_the_same_batch_started_twice_on_one_output_writes_each_question_once(cli, llm, tmp_path):
    """Two processes running the same command - same questions, same output file - to go faster: each
    question is answered by one of them and has exactly one row (each appended a row for every question:
    600 rows for 300 questions); the other counts it as already in the output, or as busy elsewhere."""
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "question": f"What is {i}*3+{i}?"}) + "\n" for i in range(60)))
    output = tmp_path / "out.jsonl"
    llm.delay = 0.01
    args = ("batch", str(questions), "-o", str(output), "--workers", "3", "--db", f"sqlite:///{tmp_path / 'b.db'}",
            "--model", MODEL, "--json")
    procs = [cli.popen(*args, env=llm.env()) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(int(r["id"]) for r in rows) == list(range(60))  # one row each, none twice
    assert all(r["status"] == "done" and r["answer"] == str(int(r["id"]) * 4) for r in rows)
    summaries = [json.loads(out) for out, _ in outs]
    # a question the other process still held at the end is "busy" here, and has its row from the other
    assert sum(s["done"] for s in summaries) == 60 and all(s["done"] + s["skipped"] + s["busy"] == 60
                                                           for s in summaries), summaries
    plans = [r["messages"][-1]["content"] for r in llm.requests if r["_task"] == "Plan"]
    assert len(plans) == len(set(plans)) == 60  # and each planned once: the thread lock kept them apart


@pytest.mark.parametrize("args, message", [
    (("reason", QUESTION, "--thread", "t", "--budget", "-1"), "budget"),
    (("reason", QUESTION, "--thread", "t", "--max-retries", "-1"), "max_retries"),
    (("reason", QUESTION, "--thread", "t", "--retry-delay", "soon"), "--retry-delay"),
    (("reason", QUESTION, "--thread", "t", "--model", "openai:my-local-model", "--budget", "1"), "needs a price"),
    (("batch", "missing.jsonl"), "cannot read missing.jsonl"),
    (("batch", "bad.jsonl"), "bad.jsonl line 2: not valid JSON"),
    (("batch", "dup.jsonl"), "id 'a' was already used on line 1"),
    (("batch", "dup.jsonl", "--workers", "0"), "--workers"),
    (("batch", "ok.jsonl", "-o", "nowhere/out.jsonl"), "cannot write nowhere/out.jsonl: No such file or directory"),
])
def test_bad_reliability_flags_are_one_clear_error(cli, llm, args, message):
    (cli.cwd / "bad.jsonl").write_text('{"id": 1, "question": "What is 1+1?"}\n{"id": 2, \n')
    (cli.cwd / "dup.jsonl").write_text('{"id": "a", "question": "What is 1+1?"}\n{"id": "a", "question": "2+2?"}\n')
    (cli.cwd / "ok.jsonl").write_text('{"id": "a", "question": "What is 1+1?"}\n')
    result = cli(*args, env=llm.env())
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (cli.cwd / "agent.db").exists() and llm.requests == []


def test_two_batch_processes_share_one_file_on_postgres_without_running_a_question_twice(cli, llm, pg, request,
                                                                                        tmp_path):
    from conftest import fresh_db_url

    url = fresh_db_url("postgres", request, tmp_path)
    questions = tmp_path / "shared.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "question": f"What is {i}*7+{i}?"}) + "\n" for i in range(30)))
    llm.delay = 0.02
    procs = [cli.popen("batch", str(questions), "-o", str(tmp_path / f"out{n}.jsonl"), "--workers", "3",
                       "--db", url, "--model", MODEL, "--json", env=llm.env()) for n in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    plans = [r["messages"][-1]["content"] for r in llm.requests if r["_task"] == "Plan"]
    assert len(plans) == len(set(plans)) == 30  # each question planned by exactly one of the two
    rows = [json.loads(line) for n in range(2) for line in (tmp_path / f"out{n}.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == {str(i) for i in range(30)}
    assert all(r["answer"] == str(int(r["id"]) * 8) for r in rows)
