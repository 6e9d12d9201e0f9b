"""`python -m agent COMMAND`: a thin typer app; every command calls the Python API in agent.api.

Exit codes: 0 ok, 1 run failed (resumable), 2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from agent.errors import AgentError, BadInput
from agent.history import counted, some

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a C tool killed by it

app = typer.Typer(
    name="agent",
    help="A chain-of-thought reasoning agent whose every step is a checkpoint in a real database.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Db = Annotated[Optional[str], typer.Option(
    "--db", help="Storage URL: sqlite:///path.db, memory://, postgresql://... "
                 "[default: AGENT_DB_URL, agent.toml, else sqlite:///agent.db]", show_default=False)]
Model = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="'offline' (built in, no key) or 'openai:<model-name>'. "
                          "[default: the thread's own model, else AGENT_MODEL, agent.toml, else offline]",
    show_default=False)]
Structured = Annotated[Optional[str], typer.Option(
    "--structured-output", help="How the model returns structured replies: json_schema or function_calling.",
    show_default=False)]
Thread = Annotated[str, typer.Option("--thread", "-t", help="Thread id: the name of this line of reasoning.")]
Checkpoint = Annotated[str, typer.Option(
    "--checkpoint", "-c", help="Checkpoint id, or a unique prefix of one (see `history`).", show_default=False)]
Fresh = Annotated[bool, typer.Option("--fresh", help="Ask the model even where the reply cache has the answer.")]
MaxRetries = Annotated[Optional[int], typer.Option(
    "--max-retries", help="Retries of a model call after a rate limit, timeout or server error [default: 3]",
    show_default=False)]
RetryDelay = Annotated[Optional[float], typer.Option(
    "--retry-delay", help="Seconds before the first retry; doubled each time, with jitter; a server's "
                          "Retry-After wins [default: 1.0]", show_default=False)]
Budget = Annotated[Optional[float], typer.Option(
    "--budget", help="US dollars the thread may spend in all; the run pauses (status budget_exceeded) before a "
                     "call that would exceed it, and resumes with a larger budget.", show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text (for scripts).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]


def _redact(url: str) -> str:
    """A storage URL safe to print: the password, if any, is masked."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not (sep and at and ":" in credentials):
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        # Piped into a file or another program: nothing to fit on a screen, so never crop a line.
        console = Console(stderr=stderr, highlight=False, soft_wrap=True, width=max(console.width, 240))
    return console


def _error_line(message: str) -> None:
    _console(stderr=True).print(f"[bold red]error:[/] {_escape(message)}", markup=True)


def _fail(message: str, code: int) -> None:
    _error_line(message)
    raise typer.Exit(code)


def _guard(debug: bool, body: Callable[[], int], interrupted: str | None = None) -> None:
    """Run a command body: known errors become one line on stderr and their exit code. Ctrl+C prints
    `interrupted`: what a command that cleans up when cut short leaves behind. Such a command (export, import,
    migrate, prune) cleans up on SIGTERM too - a service manager stopping it, `docker stop` - which would
    otherwise end the process where it stands (half a migration in the target, a stray temporary file)."""
    if interrupted is not None:
        signal.signal(signal.SIGTERM, _interrupt)
    code = EXIT_FAILED
    try:
        code = body()
    except AgentError as exc:
        if debug:  # the traceback, and still the documented exit code (re-raised, Python exits 1)
            traceback.print_exc()
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print(interrupted or "Interrupted.", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # the reader went away (`export | head`): stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more reaches the closed pipe
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a bug or an unforeseen fault: still one line, unless asked for more
        from savers.errors import StorageError

        if isinstance(exc, StorageError):  # met while reading: a crafted or corrupt row
            if debug:
                traceback.print_exc()
            _fail(str(exc), AgentError.exit_code)
        if debug or os.environ.get("AGENT_DEBUG"):
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", EXIT_FAILED)
    finally:
        if code != 0:
            _remove_new_empty_files()
    raise typer.Exit(code)


# SQLite files this command created by opening them. One it fails to put anything in (an import of a file
# that cannot be read, a migrate of a thread the source lacks, a key that is refused) is removed again, so a
# mistyped command leaves no empty database behind to be mistaken for one.
_NEW_FILES: list[str] = []


def _sqlite_file(db: str) -> str | None:
    from savers import parse_url

    where = parse_url(db)
    return where.target if where.backend == "sqlite" else None


def _note_new_file(db: str) -> None:
    if (path := _sqlite_file(db)) is not None and not Path(path).exists():
        _NEW_FILES.append(path)


def _remove_new_empty_files() -> None:
    import sqlite3

    for path in _NEW_FILES:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                          if name not in ("agent_migrations", "checkpoint_migrations")]
                empty = not any(conn.execute(f'SELECT 1 FROM "{name}" LIMIT 1').fetchone() for name in tables)
        except sqlite3.Error:  # not ours to judge: kept
            continue
        if empty:
            for suffix in ("", "-wal", "-shm"):
                Path(path + suffix).unlink(missing_ok=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class _Progress:
    """Follows a run's events: prints the reasoning as it happens (unless quiet) and knows where it stands."""

    def __init__(self, quiet: bool, verb: str = "Resuming"):
        self.out = None if quiet else _console()
        self.verb = verb
        self.plan: list[str] = []
        self.done = 0
        self.next = "analyze"

    def __call__(self, event) -> None:
        if event.kind in ("resume", "plan"):
            self.plan, self.done = list(event.steps), event.number
            self.next = "execute" if self.done < len(self.plan) else "validate"
        elif event.kind == "step":
            self.done = event.number
            self.next = "execute" if self.done < len(self.plan) else "validate"
        elif event.kind == "validation":
            self.next = "end" if event.ok else "analyze"
        if self.out is not None:
            self._print(event)

    def where(self) -> str:
        position = (f"after {self.done} of {counted(len(self.plan), 'step')}" if self.plan
                    else "before the plan was made")
        return f"{position} (next: {self.next})"

    def _print(self, event) -> None:
        out = self.out
        if event.kind == "resume":
            out.print(f"[dim]{self.verb} from checkpoint {event.result[:13]}: "
                      f"{event.number} of {counted(len(event.steps), 'step')} already done, not run again.[/]")
            for number, step in enumerate(event.steps, 1):
                mark = "✓" if number <= event.number else " "
                out.print(f"  {mark} {number}. {step}", markup=False)
        elif event.kind == "plan":
            title = "Plan" if not event.revision else f"Plan (revision {event.revision})"
            out.print(f"[bold]{title}[/]")
            for number, step in enumerate(event.steps, 1):
                out.print(f"  {number}. {step}", markup=False)
            if not event.steps:
                out.print("  (no steps: the question cannot be answered)")
        elif event.kind == "step":
            out.print(f"[cyan]Step {event.number}[/] {_escape(event.description)} [bold]→ {_escape(event.result)}[/]")
        elif event.kind == "validation":
            mark = "[green]✓ ok[/]" if event.ok else "[yellow]✗ rejected[/]"
            out.print(f"[magenta]Check[/]  {mark} {_escape(event.reason)}")
        elif event.kind == "retry":
            out.print(f"[yellow]Retry {event.attempt}/{event.number}[/] {event.node}: {_escape(event.error)} "
                      f"[dim](waiting {event.wait_s:.2f}s)[/]")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _db_flag(db: str) -> str:
    """The --db a printed command needs to reach this database again (none for the default)."""
    return "" if db == "sqlite:///agent.db" else f" --db '{_redact(db)}'"


def _resume_hint(thread: str, db: str) -> str:
    return f"python -m agent resume --thread {thread}{_db_flag(db)}"


def _report(result, settings, as_json: bool, ran: bool = True) -> int:
    """Print a run's outcome and return the exit code it maps to. A thread left where a run stands part-way
    is a failure for a command that ran, what was asked for by one that did not (exit 0, how to run it)."""
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        out = _console()
        if result.from_store:
            out.print(f"[dim]Thread {_escape(result.thread_id)} is finished; this is its stored answer "
                      "(no model call).[/]")
        if result.status == "done":
            out.print(f"[bold green]Answer:[/] {_escape(result.answer or '')}")
        from agent.render import dollars

        usage = result.usage
        cached = f" (+{usage.cached_calls} from cache)" if usage.cached_calls else ""
        out.print(f"[dim]thread {_escape(result.thread_id)} · {result.status} · "
                  f"{counted(usage.llm_calls, 'model call')}{cached}, "
                  f"{usage.input_tokens} in / {usage.output_tokens} out tokens, {dollars(usage.cost_usd)} · "
                  f"checkpoint {(result.checkpoint_id or '-')[:13]}[/]")
    if result.status == "done":
        return 0
    if not ran and result.status == "interrupted":
        if not as_json:
            _console().print(f"Edit recorded; nothing ran. Run on from it with: "
                             f"{_escape(_resume_hint(result.thread_id, settings.db))}")
        return 0
    err = _console(stderr=True)
    reason = {"failed": f"run failed: {result.error}", "budget_exceeded": result.error}.get(
        result.status, "run stopped before the end")
    hint = _escape(_resume_hint(result.thread_id, settings.db))
    err.print(f"[bold red]error:[/] {_escape(reason)}; resume with: {hint}"
              + (" --budget <more>" if result.status == "budget_exceeded" else ""))
    return EXIT_FAILED


def _exit_on_ctrl_c(progress: _Progress, thread: str, db: str) -> None:
    """Ctrl+C during a run: say where it stopped and how to go on, then leave at once.

    A model call in flight runs on a LangGraph worker thread that cannot be cancelled, and the main thread
    waits for it; so the handler exits the process itself. That is as safe as the SIGKILL we already
    survive: every finished step is committed, and the call in flight is simply made again on resume.
    """

    def handler(signum, frame):
        print(f"Interrupted {progress.where()}. Resume with: {_resume_hint(thread, db)}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, handler)


def _open_agent(flags: dict[str, Any], create: bool = True, plaintext_ok: bool = False, runs: bool = True):
    """An Agent from the command's flags (None where not given: config and defaults fill in). `runs`: the
    command may run the model (a command that only reads or moves threads needs no key or price for it)."""
    from agent.api import Agent

    agent = Agent(create=create, plaintext_ok=plaintext_ok, **flags)
    if runs:
        agent._core.check_model()
    if create:
        _note_new_file(agent.settings.db)
    return agent


def _run(flags: dict[str, Any], thread: str, as_json: bool, call: Callable[[Any, Callable | None], Any],
         create: bool = True, verb: str = "Resuming", ran: bool = True) -> int:
    """`ran`: False when the command records a checkpoint and runs nothing (`fork --no-run`)."""
    agent = _open_agent(flags, create)
    with agent:
        progress = _Progress(quiet=as_json, verb=verb)
        _exit_on_ctrl_c(progress, thread, agent.settings.db)
        return _report(call(agent, progress), agent.settings, as_json, ran)


@app.command()
def reason(
    question: Annotated[str, typer.Argument(help="The question, e.g. \"What is 17*23+4?\"", show_default=False)],
    thread: Thread,
    new: Annotated[bool, typer.Option("--new", help="Start a new run on a thread that holds another question "
                                                     "(its earlier runs stay in its history).")] = False,
    db: Db = None,
    model: Model = None,
    structured_output: Structured = None,
    max_retries: MaxRetries = None,
    retry_delay: RetryDelay = None,
    budget: Budget = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Answer a question step by step, checkpointing every step.

    Running the same command again resumes a thread that was cut short, or prints its stored answer.
    """
    def body() -> int:
        from agent.api import clean_question

        clean_question(question)  # an empty question is refused before the database is touched
        flags = _run_flags(db, model, structured_output, max_retries, retry_delay, budget)
        return _run(flags, thread, as_json,
                    lambda agent, printer: agent.reason(question, thread, new=new, on_event=printer))

    _guard(debug, body)


@app.command()
def resume(
    thread: Thread,
    db: Db = None,
    model: Model = None,
    structured_output: Structured = None,
    max_retries: MaxRetries = None,
    retry_delay: RetryDelay = None,
    budget: Budget = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Continue a thread from its last checkpoint (after a crash, Ctrl+C, a failed call or a spent budget)."""
    flags = _run_flags(db, model, structured_output, max_retries, retry_delay, budget)
    _guard(debug, lambda: _run(flags, thread, as_json,
                               lambda agent, printer: agent.resume(thread, on_event=printer), create=False))


def _run_flags(db, model, structured_output, max_retries, retry_delay, budget) -> dict[str, Any]:
    return {"db": db, "model": model, "structured_output": structured_output, "max_retries": max_retries,
            "retry_delay": retry_delay, "budget": budget}


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, default=str))


def _read(db: str | None, debug: bool, body: Callable[[Any], None], interrupted: str | None = None) -> None:
    """A read-only command: open the database (never create it) and show something from it."""

    def run() -> int:
        with _open_agent({"db": db}, create=False, runs=False) as agent:
            body(agent)
        return 0

    _guard(debug, run, interrupted)


@app.command()
def threads(
    limit: Annotated[Optional[int], typer.Option(
        "--limit", "-n", help="Show only the N threads updated last (only those are read: quick on a database "
                              "of many threads).", show_default=False)] = None,
    db: Db = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """List every thread: status, question, answer, checkpoints, branches, last update.

    Updated last first. --json prints a list of objects (thread_id, status, question, answer, updated_at,
    checkpoints, branches, head, usage, error)."""

    def body(agent) -> None:
        from agent.render import threads_table

        found = agent.threads(limit=limit)
        if as_json:
            _print_json([t.to_dict() for t in found])
        else:
            _console().print(threads_table(found, limited=limit is not None and len(found) == limit))

    _read(db, debug, body)


@app.command()
def history(
    thread: Thread,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", "-n", help="Show only the last N checkpoints (a page); the output says how to get the page "
                              "before it.", show_default=False)] = None,
    before: Annotated[Optional[str], typer.Option(
        "--before", help="Show only checkpoints listed before this one (id or prefix): the next page back.",
        show_default=False)] = None,
    db: Db = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Show a thread's checkpoints as a tree: forks, replays and edits branch off their parent; the head is marked.

    Oldest first, a parent always before its children. --json prints a flat list (checkpoint_id,
    parent_checkpoint_id, step, node, source, created_at, next, ...); with --limit or --before, an object
    {thread_id, checkpoints, next_before}: pass next_before as --before for the page before (null: no more).
    """

    def body(agent) -> None:
        from agent.render import history_tree

        rows = agent.history(thread, limit=limit, before=before)
        paged = limit is not None or before is not None
        if as_json:
            listed = [row.to_dict() for row in rows]
            _print_json({"thread_id": thread, "checkpoints": listed, "next_before": rows.next_before}
                        if paged else listed)
            return
        out = _console()
        out.print(history_tree(thread, rows))
        if rows.next_before:
            more = f" --limit {limit}" if limit is not None else ""
            out.print(f"[dim]earlier checkpoints: python -m agent history --thread {_escape(thread)}{more} "
                      f"--before {rows.next_before}{_escape(_db_flag(agent.settings.db))}[/]")

    _read(db, debug, body)


@app.command()
def show(thread: Thread, checkpoint: Checkpoint = None, db: Db = None, as_json: Json = False,
         debug: Debug = False) -> None:
    """Show the full state at a checkpoint (default: the head) and what runs next."""

    def body(agent) -> None:
        from agent.render import state_lines

        view = agent.state(thread, checkpoint)
        if as_json:
            _print_json(view.to_dict())
        else:
            out = _console()
            for line in state_lines(view):
                out.print(line)

    _read(db, debug, body)


@app.command()
def diff(
    thread: Thread,
    from_checkpoint: Annotated[str, typer.Option("--from", help="The checkpoint to compare from (id or prefix).")],
    to_checkpoint: Annotated[Optional[str], typer.Option(
        "--to", help="The checkpoint to compare to [default: the head of the thread]", show_default=False)] = None,
    to_thread: Annotated[Optional[str], typer.Option(
        "--to-thread", help="Look for --to in this thread instead (compare across threads).",
        show_default=False)] = None,
    db: Db = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Show what changed between two checkpoints, field by field (list items one by one)."""

    def body(agent) -> None:
        from agent.render import diff_table

        result = agent.diff(thread, from_checkpoint, to_checkpoint, to_thread=to_thread)
        if as_json:
            _print_json(result.to_dict())
        else:
            _console().print(diff_table(result))

    _read(db, debug, body)


@app.command()
def replay(
    thread: Thread,
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="Checkpoint to run again from (id or prefix).")],
    fresh: Fresh = False,
    db: Db = None,
    model: Model = None,
    structured_output: Structured = None,
    max_retries: MaxRetries = None,
    retry_delay: RetryDelay = None,
    budget: Budget = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Run the graph again from a past checkpoint, as a new branch of the same thread.

    The old history stays. Unchanged requests are answered from the reply cache (no model call) unless --fresh.
    """
    flags = _run_flags(db, model, structured_output, max_retries, retry_delay, budget)
    _guard(debug, lambda: _run(flags, thread, as_json,
                               lambda agent, progress: agent.replay(thread, checkpoint, fresh=fresh,
                                                                    on_event=progress),
                               create=False, verb="Replaying"))


@app.command()
def fork(
    thread: Thread,
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="Checkpoint to edit (id or prefix).")],
    assignments: Annotated[list[str], typer.Option(
        "--set", help="path=value to change, e.g. plan.1=\"Multiply 17 by 23\" (list items count from 1; "
                      "JSON values allowed). Repeatable.", show_default=False)],
    as_node: Annotated[Optional[str], typer.Option(
        "--as-node", help="Record the edit as written by this node (input, analyze, execute, validate), "
                          "which decides what runs next [default: chosen from what was edited]",
        show_default=False)] = None,
    no_run: Annotated[bool, typer.Option("--no-run", help="Record the edit checkpoint only; run nothing.")] = False,
    fresh: Fresh = False,
    db: Db = None,
    model: Model = None,
    structured_output: Structured = None,
    max_retries: MaxRetries = None,
    retry_delay: RetryDelay = None,
    budget: Budget = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Edit the state at a checkpoint, then run on from the edit as a new branch.

    What depended on an edited field is redone (edit plan.2 and step 2 onward runs again); requests that
    did not change are answered from the reply cache, so only what changed reaches the model.
    """

    def body() -> int:
        from agent.api import assignments_from

        values = assignments_from(assignments)  # a malformed --set is refused before the database is touched
        flags = _run_flags(db, model, structured_output, max_retries, retry_delay, budget)
        return _run(flags, thread, as_json,
                    lambda agent, progress: agent.fork(thread, checkpoint, values, as_node=as_node, run=not no_run,
                                                       fresh=fresh, on_event=progress),
                    create=False, verb="Running on from the edit", ran=not no_run)

    _guard(debug, body)


@app.command()
def branch(
    thread: Thread,
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="Last checkpoint to copy (id or prefix).")],
    to: Annotated[str, typer.Option("--to", help="The new thread's id (must not exist yet).")],
    db: Db = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Copy a thread's lineage up to a checkpoint into a new thread; the original is untouched.

    The new thread can be resumed, replayed, forked and branched like any other.
    """

    def body(agent) -> None:
        made = agent.branch(thread, checkpoint, to)
        if as_json:
            _print_json(made.to_dict())
        else:
            _console().print(f"Thread [bold]{escape_markup(made.thread_id)}[/] made from {escape_markup(thread)} "
                             f"up to checkpoint {made.head[:13]} ({counted(made.checkpoints, 'checkpoint')}, status "
                             f"{made.status}). Continue it with: python -m agent resume --thread {made.thread_id}")

    _read(db, debug, body)


@app.command()
def batch(
    questions: Annotated[Path, typer.Argument(
        help="JSON lines {\"id\": ..., \"question\": ...}, or plain text lines (ids are line numbers).",
        show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Where result rows go (JSON lines) [default: <questions>.results.jsonl]",
        show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, max=64,
                                         help="Questions run at the same time.")] = 4,
    thread_prefix: Annotated[Optional[str], typer.Option(
        "--thread-prefix", help="Thread ids are this prefix + the question's id [default: <questions file stem>-]",
        show_default=False)] = None,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Run again the questions whose row says failed or budget_exceeded.")] = False,
    db: Db = None,
    model: Model = None,
    structured_output: Structured = None,
    max_retries: MaxRetries = None,
    retry_delay: RetryDelay = None,
    budget: Budget = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Answer every question of a file, each in its own thread, several at a time.

    Resumable: run the same command again after a crash or Ctrl+C. Questions with a row in the output are
    skipped, cut-short threads resume from their last checkpoint, and no question gets two rows. Several
    processes (on several machines, with Postgres) can share one file: a thread another process is running
    is left to it.
    """

    def body() -> int:
        from agent.batch import Results, read_questions, run_batch

        prefix = thread_prefix if thread_prefix is not None else f"{questions.stem}-"
        items = read_questions(questions, prefix)
        flags = _run_flags(db, model, structured_output, max_retries, retry_delay, budget)
        agent = _open_agent(flags)
        results = Results(output or questions.with_name(f"{questions.stem}.results.jsonl"),
                          database=_sqlite_file(agent.settings.db))
        if retry_failed:
            results.forget({"failed", "budget_exceeded"})
        with agent:
            tally = _with_progress(as_json, lambda on_change: run_batch(agent, items, results, workers, on_change))
        summary = {**tally.to_dict(), "output": str(results.path)}
        if as_json:
            _print_json(summary)
        else:
            _console().print(f"{tally.done} done, {tally.failed} failed, {tally.skipped} already in "
                             f"{escape_markup(results.path.name)}, {tally.busy} busy elsewhere · "
                             f"spent ${tally.spend_usd:.4f}")
        # A question another process is running is that process's work (several batches may share a file).
        return EXIT_FAILED if tally.failed else 0

    _guard(debug, body)


def _with_progress(quiet: bool, work: Callable[[Callable], Any]) -> Any:
    """A progress bar on stderr (done / failed / running / spend) while `work` runs; Ctrl+C leaves at once."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    def on_ctrl_c(signum, frame):
        print("Interrupted. Run the same command again to go on where it stopped.", file=sys.stderr)
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)  # as for one run: workers are mid-call; every finished step is stored

    signal.signal(signal.SIGINT, on_ctrl_c)
    if quiet:
        return work(lambda tally: None)
    with Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
                  TimeElapsedColumn(), console=_console(stderr=True), transient=False) as bar:
        task = bar.add_task("batch", total=None, counts="")

        def on_change(tally) -> None:
            with tally.lock:
                finished = tally.skipped + tally.done + tally.failed
                counts = (f"done {tally.done} · failed {tally.failed} · running {tally.running} · "
                          f"skipped {tally.skipped} · ${tally.spend_usd:.4f}")
                bar.update(task, total=tally.total, completed=finished, counts=counts)

        return work(on_change)


@app.command()
def delete(
    thread: Thread,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts).")] = False,
    db: Db = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Delete a thread for good: its checkpoints, writes, cached replies and lock. Asks first on a terminal."""

    def body(agent) -> None:
        info = agent.result(thread)  # unknown thread: an error before any question is asked
        if not yes:
            if not sys.stdin.isatty():
                raise BadInput("delete needs --yes when not run from a terminal")
            if not typer.confirm(f"Delete thread {thread} ({counted(len(agent.history(thread)), 'checkpoint')}, "
                                 f"question \"{info.question}\")? This cannot be undone"):
                raise typer.Exit(1)
        agent.delete(thread)
        if as_json:
            _print_json({"deleted": thread})
        else:
            _console().print(f"Deleted thread {escape_markup(thread)}.")

    _read(db, debug, body)


@contextlib.contextmanager
def _checkpoint_bar(label: str, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr, and what to call as each checkpoint is written: on_checkpoint(total). Shown
    from the first checkpoint on, so that bad input (an unknown thread, a missing file) prints its one line
    of error and no empty bar."""
    from rich.progress import Progress

    bar = Progress(console=_console(stderr=True), disable=quiet)
    task = bar.add_task(label, total=None)

    def written(total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, total=total, advance=1)

    try:
        yield written
    finally:
        if bar.live.is_started:
            bar.stop()


@app.command("export")
def export_command(
    threads_: Annotated[Optional[list[str]], typer.Option(
        "--thread", "-t", help="A thread to export (repeatable) [default: every thread]", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="File to write [default: standard output]", show_default=False)] = None,
    db: Db = None,
    debug: Debug = False,
) -> None:
    """Export threads as versioned JSON Lines (checkpoints, metadata, pending writes), streamed, with a progress bar.

    The file is written whole or not at all; `import` loads it into any database. It is plaintext, also
    when the database is encrypted.
    """

    def body(agent) -> None:
        from agent.lifecycle import output_file

        with output_file(output, sys.stdout) as out, _checkpoint_bar("export", quiet=False) as written:
            report = agent.export(out, threads_, written)
        if agent.encrypted:
            _console(stderr=True).print("note: the database is encrypted, the export is not: keep the file as safe "
                                        "as the key", markup=False)
        if output is not None:
            _console(stderr=True).print(f"Exported {counted(len(report.threads), 'thread')}, "
                                        f"{counted(report.checkpoints, 'checkpoint')} and "
                                        f"{counted(report.writes, 'write')} to {output}.", markup=False)

    _read(db, debug, body, f"Interrupted: {output} was not written." if output is not None else
          "Interrupted: the export on standard output stops short (use --output for a file written whole or "
          "not at all).")


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="An export file (from `export`).", show_default=False)],
    rename: Annotated[Optional[list[str]], typer.Option(
        "--rename", help="OLD=NEW: import thread OLD as NEW (repeatable).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace threads that already exist.")] = False,
    db: Db = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Load an export file: checked whole before anything is written; all or nothing. A progress bar shows the
    writing."""

    def body() -> int:
        from agent.lifecycle import parse_renames

        renames = parse_renames(rename or [])
        with _open_agent({"db": db}, runs=False) as agent, _checkpoint_bar("import", quiet=as_json) as written:
            try:
                report = agent.import_file(file, renames=renames, overwrite=overwrite, on_checkpoint=written)
            except KeyboardInterrupt as exc:
                if not exc.args:
                    raise
                print(f"Interrupted: {exc.args[0]}.", file=sys.stderr)
                return EXIT_INTERRUPTED
        if as_json:
            _print_json(report.to_dict())
        else:
            _console().print(f"Imported {counted(len(report.threads), 'thread')} ({some(report.threads, 10)}), "
                             f"{counted(report.checkpoints, 'checkpoint')}, {counted(report.writes, 'write')}"
                             + (f"; replaced {some(report.replaced, 10)}" if report.replaced else "") + ".",
                             markup=False)
        return 0

    _guard(debug, body, "Interrupted: what was written is removed; the database is as it was.")


@app.command()
def migrate(
    source: Annotated[str, typer.Option("--from", help="Storage URL to copy from.", show_default=False)],
    target: Annotated[str, typer.Option("--to", help="Storage URL to copy into.", show_default=False)],
    threads_: Annotated[Optional[list[str]], typer.Option(
        "--thread", "-t", help="A thread to copy (repeatable) [default: every thread]", show_default=False)] = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Copy threads from one database to another (e.g. SQLite to Postgres), with a progress bar."""

    def body() -> int:
        # The source may be a plaintext database even when AGENT_ENCRYPTION_KEY is set: that is how one
        # encrypts a database - migrate it into a new one with the key.
        with _open_agent({"db": source}, create=False, plaintext_ok=True, runs=False) as origin, \
                _open_agent({"db": target}, runs=False) as destination, _checkpoint_bar("migrate", quiet=as_json) as written:
            report = origin.migrate_to(destination, threads_, written)
        if as_json:
            _print_json(report.to_dict())
        else:
            _console().print(f"Copied {counted(len(report.threads), 'thread')}, "
                             f"{counted(report.checkpoints, 'checkpoint')} and {counted(report.writes, 'write')}.",
                             markup=False)
        return 0

    _guard(debug, body, "Interrupted: what was copied is removed; the target database is as it was.")


@app.command()
def prune(
    thread: Annotated[Optional[str], typer.Option(
        "--thread", "-t", help="Only this thread [default: every thread]", show_default=False)] = None,
    keep: Annotated[int, typer.Option("--keep", min=1, help="Checkpoints kept on each branch, newest first, "
                                                            "counting back from its head.")] = 10,
    older_than: Annotated[Optional[str], typer.Option(
        "--older-than", help="Only remove checkpoints older than this (30d, 12h, 90m, 2w).",
        show_default=False)] = None,
    keep_completed: Annotated[bool, typer.Option("--keep-completed", help="Leave finished threads whole.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go and the bytes it frees; "
                                                            "change nothing.")] = False,
    db: Db = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Trim old checkpoints by a retention policy; every thread stays resumable and shows its final state.

    After a real prune, SQLite gives the freed space back (incremental vacuum), so the file shrinks.
    """

    def body(agent) -> None:
        from agent.lifecycle import RetentionPolicy, parse_age

        policy = RetentionPolicy(keep, parse_age(older_than) if older_than else None, keep_completed)
        report = agent.prune(policy, thread=thread, dry_run=dry_run)
        if as_json:
            _print_json(report.to_dict())
            return
        out = _console()
        verb = "Would remove" if dry_run else "Removed"
        out.print(f"{verb} {counted(report.checkpoints, 'checkpoint')} from {counted(len(report.removed), 'thread')} "
                  f"(about {report.bytes_freed / 1024:.0f} KiB of checkpoint data).", markup=False)
        if report.file_bytes_before is not None and not dry_run:
            out.print(f"Database file and WAL: {report.file_bytes_before / 1024:.0f} KiB -> "
                      f"{report.file_bytes_after / 1024:.0f} KiB.", markup=False)

    _read(db, debug, body, "Interrupted: the threads trimmed so far stay trimmed, the others are as they were "
                           "(every one whole); run it again to go on.")


def escape_markup(text: str) -> str:
    return _escape(text)


@app.command()
def ui(
    db: Db = None,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on. Anything but this machine (127.0.0.1, ::1) needs --token.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="Port to listen on; 0 takes any free port.")] = 8765,
    write: Annotated[bool, typer.Option(
        "--write", help="Allow replay, fork, branch and resume from the page (without it the UI only reads).")]
    = False,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="AGENT_UI_TOKEN", show_default=False,
        help="A secret every request must carry (required with a non-local --host); the printed link has it.")]
    = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the address; do not open a browser.")]
    = False,
    debug: Debug = False,
) -> None:
    """Open the time-travel debugger in a browser, on this database: threads, each thread's history as a graph,
    states, diffs - and, with --write, replay, fork, branch and resume with live progress. Ctrl+C stops it.
    """

    def body() -> int:
        from agent.ui import serve

        serve(db, host=host, port=port, write=write, token=token, open_browser=not no_browser)
        return 0

    _guard(debug, body)


def _reflow(doc: str | None) -> str | None:
    """A docstring as help text: each paragraph on one line, for the terminal to wrap. (Typer joins the lines
    of a command's first paragraph but, since 0.29, keeps the source's line breaks in the others, which then
    show as ragged lines wherever they fall.)"""
    if not doc:
        return doc
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


for _command in app.registered_commands:
    _command.help = _reflow(_command.help or _command.callback.__doc__)


def main() -> None:
    """The command line. A usage error (a missing or unknown option or command, a value of the wrong type) is
    one line on stderr and exit 2, as every other bad input is, not Click's boxed usage text."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # Click's exceptions (typer ships its own Click)
        ctx, message = getattr(exc, "ctx", None), exc.format_message()
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `python -m agent`: its help is printed already
            pass
        elif ctx is not None:
            _error_line(f"{message} (see `{ctx.command_path} --help`)")
        else:
            _error_line(message)
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:  # end of input at a prompt
        _error_line("aborted")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
