"""The CLI as a person uses it: the README's main job, --json, stored answers, and one clear line for bad input."""

import json
import os
import time

import pytest

QUESTION = "What is 17*23+4?"


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_readme_main_job_prints_the_reasoning_and_the_answer(cli):
    result = cli("reason", QUESTION, "--thread", "t1", "--model", "offline")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # the plan, each step with its result, the check, then the answer, in that order
    positions = [out.index(text) for text in (
        "Plan", "1. Multiply 17 by 23", "2. Add the result of step 1 and 4",
        "Step 1", "→ 391", "Step 2", "→ 395", "Check", "✓ ok", "Answer: 395")]
    assert positions == sorted(positions)
    assert (cli.cwd / "agent.db").is_file()  # the default storage, in the working directory


def test_json_output_has_the_documented_shape(cli):
    result = cli("reason", "What is 2+3*4?", "--thread", "j", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "done" and data["answer"] == "14" and data["thread_id"] == "j"
    assert data["checkpoint_id"]
    assert data["steps"] == [{"description": "Multiply 3 by 4", "result": "12"},
                             {"description": "Add 2 and the result of step 1", "result": "14"}]
    assert data["usage"]["llm_calls"] == 4
    assert data["usage"]["input_tokens"] > 0 and data["usage"]["output_tokens"] > 0


def test_a_finished_thread_answers_from_the_database_without_a_model_call(cli, llm, db_url):
    args = ("reason", QUESTION, "--thread", "t1", "--db", db_url, "--model", "openai:gpt-4o-mini", "--json")
    first = cli(*args, env=llm.env())
    assert first.returncode == 0, first.stderr
    calls = len(llm.requests)
    assert calls == 4
    again = cli(*args, env=llm.env())
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["answer"] == "395" and data["from_store"] is True
    assert len(llm.requests) == calls


def test_a_different_question_on_a_thread_is_refused_unless_new(cli):
    assert cli("reason", QUESTION, "--thread", "t1").returncode == 0
    refused = cli("reason", "What is 1+1?", "--thread", "t1")
    assert refused.returncode == 2
    line = one_error_line(refused)
    assert "t1" in line and "--new" in line
    renewed = cli("reason", "What is 1+1?", "--thread", "t1", "--new", "--json")
    assert renewed.returncode == 0, renewed.stderr
    assert json.loads(renewed.stdout)["answer"] == "2"


def test_fork_no_run_records_the_edit_and_exits_0_saying_how_to_run_it(cli):
    """Found trying the CLI: `fork --no-run` did what it was asked, then said 'error: run stopped before the
    end' and exited 1."""
    assert cli("reason", QUESTION, "--thread", "t1").returncode == 0
    rows = json.loads(cli("history", "--thread", "t1", "--json").stdout)
    at = next(row["checkpoint_id"] for row in rows if row["step"] == 2)
    forked = cli("fork", "--thread", "t1", "-c", at, "--set", "plan.2=Add the result of step 1 and 5", "--no-run")
    assert forked.returncode == 0 and not forked.stderr, forked.stderr
    assert "nothing ran" in forked.stdout and "python -m agent resume --thread t1" in forked.stdout
    as_json = cli("fork", "--thread", "t1", "-c", at, "--set", "plan.2=Add the result of step 1 and 6", "--no-run",
                  "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["status"] == "interrupted"
    assert json.loads(cli("resume", "--thread", "t1", "--json").stdout)["status"] == "done"


def test_an_edit_of_the_wrong_kind_is_one_line(cli):
    assert cli("reason", QUESTION, "--thread", "t1").returncode == 0
    rows = json.loads(cli("history", "--thread", "t1", "--json").stdout)
    for args, message in (((rows[2]["checkpoint_id"], "revisions=-5"), "'revisions' must be a whole number"),
                          ((rows[0]["checkpoint_id"], "plan.1=Add 1 and 2"), "holds no state yet")):
        refused = cli("fork", "--thread", "t1", "-c", args[0], "--set", args[1])
        assert refused.returncode == 2 and message in one_error_line(refused)
    assert len(json.loads(cli("history", "--thread", "t1", "--json").stdout)) == len(rows)


def test_export_into_a_pipe_its_reader_closes_stops_quietly(cli):
    """Found trying the CLI: `export | head -c 200` ended with 'error: unexpected BrokenPipeError'."""
    question = "What is " + "+".join(str(n) for n in range(1, 31)) + "?"
    assert cli("reason", question, "--thread", "long").returncode == 0
    export = cli.popen("export", "--thread", "long")
    assert export.stdout.read(200)
    export.stdout.close()  # as `head` does once it has its bytes
    export.wait(timeout=60)
    assert export.returncode == 141  # 128 + SIGPIPE, as a shell shows for a tool the closed pipe ended
    assert "error" not in export.stderr.read()  # (only the progress bar is there)


def test_an_export_or_batch_output_that_is_the_database_is_refused_and_the_database_kept(cli):
    """Found trying the CLI: `export -o agent.db` replaced the open database by the export ("exported 1 thread",
    then every command: "the file is not a SQLite database")."""
    assert cli("reason", QUESTION, "--thread", "t1").returncode == 0
    (cli.cwd / "q.txt").write_text("What is 2+2?\n")
    for args, message in [(("export", "-o", "agent.db"), "agent.db is a SQLite database"),
                          (("export", "-o", "agent.db-wal"), "is a file of the SQLite database agent.db"),
                          (("export", "-o", str(cli.cwd)), "it is a directory"),
                          (("batch", "q.txt", "-o", "agent.db"), "agent.db is a SQLite database")]:
        refused = cli(*args)
        assert refused.returncode == 2 and message in one_error_line(refused), args
    assert [t["thread_id"] for t in json.loads(cli("threads", "--json").stdout)] == ["t1"]
    assert cli("export", "-o", "backup.jsonl").returncode == 0 and (cli.cwd / "backup.jsonl").stat().st_size
    # A first batch on a database it is about to make: refused before the file exists (its rows went into it).
    refused = cli("batch", "q.txt", "-o", "new.db", "--db", "sqlite:///new.db")
    assert refused.returncode == 2 and "new.db is a SQLite database" in one_error_line(refused)
    assert not (cli.cwd / "new.db").exists()
    os.mkfifo(cli.cwd / "pipe")  # no header to read there: looking for one waited for a writer forever
    refused = cli("batch", "q.txt", "-o", "pipe")
    assert refused.returncode == 2 and "cannot write pipe" in one_error_line(refused)


def test_a_configured_model_is_needed_only_by_the_commands_that_run_it(cli):
    """Found trying the README's configuration: with `model = "openai:gpt-4o-mini"` in agent.toml and no
    OPENAI_API_KEY, every command refused ("OPENAI_API_KEY is not set"), `threads` and `export` too."""
    assert cli("reason", QUESTION, "--thread", "t1").returncode == 0
    (cli.cwd / "agent.toml").write_text('model = "openai:gpt-4o-mini"\nbudget = 1.0\n')
    for args in (("threads",), ("history", "--thread", "t1"), ("show", "--thread", "t1"),
                 ("export", "-o", "t1.jsonl"), ("prune", "--keep", "2", "--dry-run")):
        assert cli(*args).returncode == 0, args
    refused = cli("resume", "--thread", "t2")
    assert refused.returncode == 2 and "OPENAI_API_KEY is not set" in one_error_line(refused)
    # and a base URL that is no URL is one line too (it was retried three times as a network fault, exit 1)
    refused = cli("resume", "--thread", "t2", env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "notaurl"})
    assert refused.returncode == 2 and "OPENAI_BASE_URL 'notaurl' is not an http(s) URL" in one_error_line(refused)
    (cli.cwd / "agent.toml").unlink()
    assert cli("reason", QUESTION, "--thread", "o1", "--model", "openai:gpt-4o-mini",
               env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "AGENT_MAX_RETRIES": "0"}
               ).returncode == 1  # a thread of that model, cut short
    refused = cli("resume", "--thread", "o1")  # its recorded model, and no key now
    assert refused.returncode == 2 and "OPENAI_API_KEY is not set" in one_error_line(refused)
    assert refused.stdout == ""  # it printed "Resuming from checkpoint ..." before it failed


def test_debug_shows_the_traceback_and_keeps_the_exit_code(cli):
    """Found trying the CLI: with --debug a known error was raised on, and Python exited 1 where the README
    documents 2 (bad input) and 3 (busy)."""
    assert cli("reason", QUESTION, "--thread", "t1").returncode == 0
    shown = cli("show", "--thread", "nope", "--debug")
    assert shown.returncode == 2 and "Traceback" in shown.stderr and "ThreadNotFound" in shown.stderr
    assert shown.stderr.rstrip().splitlines()[-1].startswith("error: no thread 'nope'")


def test_branch_to_an_empty_name_names_the_flag(cli):
    assert cli("reason", QUESTION, "--thread", "t1").returncode == 0
    head = json.loads(cli("history", "--thread", "t1", "--json").stdout)[-1]["checkpoint_id"]
    refused = cli("branch", "--thread", "t1", "-c", head, "--to", " ")
    assert refused.returncode == 2 and "name the thread with --to" in one_error_line(refused)


def test_storage_is_chosen_from_flag_then_env_then_agent_toml(cli, tmp_path):
    (tmp_path / "agent.toml").write_text('db = "sqlite:///from_toml.db"\n')
    assert cli("reason", "What is 1+2?", "--thread", "a").returncode == 0
    assert (tmp_path / "from_toml.db").is_file() and not (tmp_path / "agent.db").exists()
    assert cli("reason", "What is 1+2?", "--thread", "a", env={"AGENT_DB_URL": "sqlite:///from_env.db"}).returncode == 0
    assert (tmp_path / "from_env.db").is_file()
    assert cli("reason", "What is 1+2?", "--thread", "a", "--db", "sqlite:///from_flag.db",
               env={"AGENT_DB_URL": "sqlite:///from_env.db"}).returncode == 0
    assert (tmp_path / "from_flag.db").is_file()


def test_structured_output_method_is_configurable(cli, llm, tmp_path):
    for method, key in (("json_schema", "response_format"), ("function_calling", "tools")):
        result = cli("reason", QUESTION, "--thread", method, "--model", "openai:gpt-4o-mini",
                     "--structured-output", method, "--json", env=llm.env())
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["answer"] == "395"
        assert key in llm.requests[-1]


BAD_INPUT = [
    (("reason", "   ", "--thread", "t1"), "question is empty"),
    (("reason", QUESTION, "--thread", "t1", "--db", "mysql://localhost/x"), "unknown storage scheme"),
    (("reason", QUESTION, "--thread", "t1", "--db", "agent.db"), "not a storage URL"),
    (("reason", QUESTION, "--thread", "t1", "--db", "sqlite://"), "no file path"),
    (("reason", QUESTION, "--thread", "t1", "--db", "sqlite:////no/such/dir/a.db"), "does not exist"),
    (("reason", QUESTION, "--thread", "t1", "--db", "sqlite:////proc/agent.db"), "read-only"),
    (("reason", QUESTION, "--thread", "t1", "--db", "postgresql://u@h:notaport/x"), "Postgres"),
    (("reason", QUESTION, "--thread", "t1", "--model", "gpt-4o"), "unknown model"),
    (("reason", QUESTION, "--thread", "t1", "--model", "openai:gpt-4o-mini"), "--model offline"),
    (("reason", QUESTION, "--thread", "t1", "--structured-output", "xml"), "structured_output"),
    (("resume", "--thread", "nope"), "no SQLite database"),
    # Usage errors: one line too, not Click's boxed usage text.
    (("history", "--bogus"), "No such option: --bogus (see `python -m agent history --help`)"),
    (("branch", "--thread", "t1", "--to", "t2"), "Missing option '--checkpoint'"),
    (("history", "--thread", "t1", "--limit", "many"), "Invalid value for '--limit'"),
    (("nosuchcommand",), "No such command 'nosuchcommand'"),
    (("ui", "--no-browser", "--port", "99999"), "Invalid value for '--port'"),  # was an OverflowError, exit 1
    # These opened (so made) the database before failing, and left it behind, empty.
    (("import", "missing.jsonl"), "cannot read missing.jsonl"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_is_one_line_and_writes_nothing(cli, args, message):
    result = cli(*args)
    assert result.returncode == 2
    assert message in one_error_line(result)
    assert not (cli.cwd / "agent.db").exists()


def test_a_refused_command_leaves_no_empty_database_it_made(cli):
    refused = cli("reason", QUESTION, "--thread", "t1", env={"AGENT_ENCRYPTION_KEY": "short"})
    assert refused.returncode == 2 and "too short" in one_error_line(refused)
    assert cli("reason", QUESTION, "--thread", "t1").returncode == 0
    made = cli("migrate", "--from", "sqlite:///agent.db", "--to", "sqlite:///copy.db", "--thread", "nosuch")
    assert made.returncode == 2 and "no thread 'nosuch'" in one_error_line(made)
    assert sorted(p.name for p in cli.cwd.iterdir() if p.suffix == ".db") == ["agent.db"]
    # one that holds threads is never removed, whatever fails after it was made
    failed = cli("import", "missing.jsonl", "--db", "sqlite:///agent.db")
    assert failed.returncode == 2 and (cli.cwd / "agent.db").exists()


def test_resume_of_an_unknown_thread_names_it(cli, db_url):
    assert cli("reason", QUESTION, "--thread", "known", "--db", db_url).returncode == 0
    result = cli("resume", "--thread", "unknown", "--db", db_url)
    assert result.returncode == 2
    assert "no thread 'unknown'" in one_error_line(result)
    for name in ("a[/]", "[bold]b[/bold]"):  # read as markup, the first was a traceback, the second showed 'b'
        result = cli("history", "--thread", name, "--db", db_url)
        assert result.returncode == 2 and f"no thread '{name}'" in one_error_line(result)


@pytest.mark.parametrize("content, message", [
    ("db = [\n", "agent.toml is not valid TOML"),
    ('colour = "blue"\n', "unknown setting 'colour'"),
    ("max_revisions = -1\n", "max_revisions"),
    # Was read only after a run had stored its answer (whose lines were then never printed), naming a flag.
    ('[retention]\nolder_than = "banana"\n', "retention.older_than: 'banana' is not an age"),
])
def test_invalid_agent_toml_is_one_line(cli, content, message):
    (cli.cwd / "agent.toml").write_text(content)
    result = cli("reason", QUESTION, "--thread", "t1")
    assert result.returncode == 2
    assert message in one_error_line(result)
    assert not (cli.cwd / "agent.db").exists()


def test_unreachable_postgres_fails_fast_naming_host_and_port(cli):
    started = time.monotonic()
    result = cli("reason", QUESTION, "--thread", "t1", "--db", "postgresql://postgres:pw@127.0.0.1:1/agent")
    assert time.monotonic() - started < 15
    assert result.returncode == 2
    assert "cannot connect to Postgres at 127.0.0.1:1" in one_error_line(result)


def test_wrong_postgres_password_is_one_clear_line(cli, pg):
    result = cli("reason", QUESTION, "--thread", "t1", "--db", pg.url(password="wrong-password"))
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"127.0.0.1:{pg.port}" in line and "password authentication failed" in line
    assert "wrong-password" not in result.stderr


def test_help_is_written_for_people(cli):
    result = cli("--help")
    assert result.returncode == 0
    for command in ("reason", "resume"):
        assert command in result.stdout
    assert "--new" in cli("reason", "--help").stdout
    # Each paragraph of a command's help is wrapped by the terminal, not broken where the docstring's lines
    # end (typer keeps those since 0.29): on a wide terminal the paragraph is one line.
    wide = cli("fork", "--help", env={"COLUMNS": "250"}).stdout
    assert "(edit plan.2 and step 2 onward runs again); requests that did not change are answered" in wide
