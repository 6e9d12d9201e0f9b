"""The Python API: `Agent` (sync) and `AsyncAgent` (async), the same methods on one shared core.

Every CLI command calls these; results are typed objects, never bare dicts.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from os import PathLike
from pathlib import Path
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agent.config import DEFAULT_MODEL, Settings, load_settings
from agent.errors import (
    AgentError, BadInput, CheckpointNotFound, ModelError, NotOpen, QuestionMismatch, StorageError, ThreadBusy,
    ThreadExists, ThreadNotFound,
)
from agent.history import (
    CheckpointInfo, Diff, HistoryPage, Page, PageRows, ThreadInfo, checkpoint_info, diff_values, history_page,
    parse_assignment, set_path, shortest_unique,
)
from agent.lifecycle import (
    PruneReport, RetentionPolicy, TransferReport, check_threads, checkpoints_to_remove, export_threads, import_file,
    migrate, trim_thread,
)
from agent.models import check_spec, make_model, model_identity

Status = Literal["done", "interrupted", "failed", "budget_exceeded", "running"]


@dataclass(frozen=True)
class Usage:
    """What a thread has cost so far, over every run on it: model calls and their tokens, and the calls
    answered from the reply cache instead (free, and not counted in llm_calls)."""

    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_calls: int = 0
    cost_usd: float = 0.0  # from the price table in config; 0 for models without a known price


@dataclass(frozen=True)
class Step:
    """One step of the plan and its result (None while it has not run)."""

    description: str
    result: str | None = None


@dataclass(frozen=True)
class RunResult:
    """Where a thread stands after a run: the answer, the reasoning that led to it, and its cost."""

    thread_id: str
    checkpoint_id: str | None
    status: Status
    question: str
    answer: str | None
    steps: list[Step] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    validation: dict | None = None
    next: list[str] = field(default_factory=list)
    error: str | None = None
    model: str | None = None
    # True when the answer came from the database without a model call (the thread was finished).
    from_store: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON shape printed by `--json` (documented in the README)."""
        return asdict(self)


@dataclass(frozen=True)
class Event:
    """Progress of a run as it happens: a run resumed, a plan was made, a step was carried out, the draft checked.

    `resume` carries the plan so far in `steps`, the results so far count in `number`, and `result` names
    the checkpoint it continues from.
    """

    kind: Literal["resume", "plan", "step", "validation", "retry"]
    steps: list[str] = field(default_factory=list)  # plan
    number: int = 0  # step: 1-based
    description: str = ""  # step
    result: str = ""  # step
    ok: bool | None = None  # validation
    reason: str = ""  # validation
    revision: int = 0  # plan: 0 for the first plan, n for the n-th revision
    node: str = ""  # retry: the node whose call failed
    attempt: int = 0  # retry: 1 for the first retry
    wait_s: float = 0.0  # retry: seconds before it
    error: str = ""  # retry: what failed


OnEvent = Callable[[Event], None]


@dataclass(frozen=True)
class StateView:
    """The full state at one checkpoint (`show`): where it sits in the history, its values, and its result."""

    thread_id: str
    checkpoint: CheckpointInfo
    result: RunResult
    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        result = self.result.to_dict()
        return {"thread_id": self.thread_id, **self.checkpoint.to_dict(),
                **{k: result[k] for k in ("status", "question", "steps", "answer", "validation", "usage", "error")},
                "values": self.values}


# A replay's graph input (_Core.graph_input).
REPLAY = object()


def task_error(snapshot) -> str | None:
    """The error a task of the snapshot's next step stopped with, if any. A cancelled task is no error: the run
    was stopped between steps (an asyncio timeout or cancel, as Ctrl+C is on the command line), and LangGraph
    records CancelledError as the task's error; the thread is `interrupted` and resumes."""
    for task in snapshot.tasks:
        if (error := getattr(task, "error", None)) and not (
                isinstance(error, (asyncio.CancelledError, KeyboardInterrupt))
                or str(error).startswith(("CancelledError(", "KeyboardInterrupt("))):
            return str(error)
    return None


def _must_be_text(value: Any, what: str) -> None:
    """The Python API's arguments that name things are text: anything else is one clear BadInput."""
    if value is not None and not isinstance(value, str):
        raise BadInput(f"{what} must be text (str), not {type(value).__name__}: {value!r:.60}")


def _file_path(path: Any) -> Path:
    if not isinstance(path, (str, PathLike)):
        raise BadInput(f"the file must be a path (str or pathlib.Path), not {type(path).__name__}: {path!r:.60}")
    return Path(path)


def clean_question(question: str) -> str:
    # Prompts are line-oriented; a question is one line of text.
    _must_be_text(question, "the question")
    text = " ".join((question or "").split())
    if not text:
        raise BadInput("the question is empty: ask something, e.g. \"What is 17*23+4?\"")
    return text


def _clean_thread(thread: str, flag: str = "--thread") -> str:
    _must_be_text(thread, "the thread id")
    text = (thread or "").strip()
    if not text:
        raise BadInput(f"the thread id is empty: name the thread with {flag}, e.g. {flag} t1")
    return text


def _wrap_storage(exc: Exception) -> StorageError:
    return StorageError(str(exc))


class _EventTracker:
    """Turns LangGraph's per-node updates into Events, numbering steps against the current plan."""

    def __init__(self, on_event: OnEvent | None, snapshot, resuming: bool):
        values = (snapshot.values or {}) if resuming else {}
        self.on_event, self.plan, self.revisions = on_event, list(values.get("plan", [])), values.get("revisions", 0)
        if resuming and on_event is not None:
            checkpoint = snapshot.config["configurable"].get("checkpoint_id", "")
            on_event(Event("resume", steps=self.plan, number=len(values.get("results", [])), result=checkpoint))

    def feed(self, mode: str, chunk: Any) -> None:
        if mode == "custom":
            if self.on_event is not None and isinstance(chunk, dict) and chunk.get("kind") == "retry":
                self.on_event(Event("retry", node=chunk["node"], attempt=chunk["attempt"], wait_s=chunk["wait_s"],
                                    error=chunk["error"], number=chunk["max_retries"]))
            return
        for node, update in chunk.items():
            if not isinstance(update, dict) or self.on_event is None:
                continue
            if node == "analyze":
                self.plan = update.get("plan", [])
                self.on_event(Event("plan", steps=self.plan, revision=self.revisions))
            elif node == "execute":
                results = update.get("results", [])
                number = len(results)
                description = self.plan[number - 1] if 0 < number <= len(self.plan) else ""
                self.on_event(Event("step", number=number, description=description, result=results[-1]))
            elif node == "validate":
                verdict = update.get("validation", {})
                self.revisions = update.get("revisions", self.revisions)
                self.on_event(Event("validation", ok=verdict.get("ok"), reason=verdict.get("reason", "")))


class _Core:
    """What Agent and AsyncAgent share: settings, the graph per model, and every decision that needs no I/O."""

    def __init__(self, db: str | None, model: str | None, settings: Settings | None, overrides: dict[str, Any],
                 create: bool = True):
        if settings is None:
            settings = load_settings({"db": db, "model": model, **overrides})
        elif db is not None or model is not None or overrides:
            settings = settings.model_copy(update={k: v for k, v in
                                                   {"db": db, "model": model, **overrides}.items() if v is not None})
        self.settings = settings
        if model is not None:  # named by the caller: checked at once. One from config or the environment is
            # checked when a run uses it - a command that runs no model (history, export) must not need its key.
            self.check_spec_and_price(settings.model)
        self.create = create
        self.plaintext_ok = False
        self._saver: Any = None
        self._opening = False  # between opening() and opened(): a second entry is refused
        self._loop: asyncio.AbstractEventLoop | None = None  # an AsyncAgent's: the loop it was opened on
        self._graphs: dict[str, Any] = {}
        self._lock = threading.Lock()

    # The saver is open only inside the Agent's `with` block. The graphs are compiled on it, so they go when it
    # closes: an Agent entered again opens a new saver and compiles new graphs (they ran on the closed one).
    @property
    def saver(self) -> Any:
        if self._saver is None:
            raise NotOpen("this Agent is not open: use it inside `with Agent(...) as agent:` (`async with` for "
                          "AsyncAgent) - it was not entered yet, or it was closed")
        # An AsyncAgent's connections and locks belong to its loop: used from another, asyncio raised "bound to
        # a different event loop", and on Postgres the runs of the agent's own loop waited out the pool timeout.
        # (Its worker threads run no loop, and pass.)
        if self._loop is not None and (running := asyncio._get_running_loop()) is not None \
                and running is not self._loop:
            raise AgentError("this AsyncAgent was opened on another event loop: use it on that loop only, or "
                             "open an AsyncAgent on each loop")
        return self._saver

    def opening(self) -> None:
        with self._lock:
            if self._saver is not None or self._opening:
                raise AgentError("this Agent is open already: enter it once, or use a second Agent")
            self._opening = True

    def opened(self, saver: Any | None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """The saver just opened (an AsyncAgent's, on `loop`), or None when opening it failed."""
        with self._lock:
            self._saver, self._opening, self._loop = saver, False, loop
            self._graphs.clear()

    def closed(self) -> None:
        self.opened(None)

    def retention(self) -> RetentionPolicy | None:
        """The [retention] policy of the settings, applied to a thread after each run on it."""
        from agent.lifecycle import parse_age

        conf = self.settings.retention
        if conf is None:
            return None
        return RetentionPolicy(conf.keep, parse_age(conf.older_than) if conf.older_than else None,
                               conf.keep_completed)

    def saver_options(self, **overrides):
        """How to open the database: the settings' compression and Postgres connection options, the key from
        AGENT_ENCRYPTION_KEY."""
        from savers.options import SaverOptions

        return SaverOptions.from_env(compression=None if self.settings.compression == "none"
                                     else self.settings.compression, plaintext_ok=self.plaintext_ok,
                                     prepare_threshold=self.settings.pg_prepare_threshold,
                                     pool_size=self.settings.pg_pool_size, **overrides)

    def graph(self, spec: str, method: str | None = None):
        """The compiled graph for a model spec and structured-output method (default: the settings'), built once
        and shared by every thread of the service."""
        method = method or self.settings.structured_output
        with self._lock:
            if (spec, method) not in self._graphs:
                from graphs.cot import build_graph

                from graphs.ask import Price, Retry

                price = self.settings.price_of(spec)
                builder = build_graph(
                    make_model(spec),
                    structured_output=method,
                    max_revisions=self.settings.max_revisions,
                    cache=getattr(self.saver, "response_cache", None),
                    model_id=model_identity(spec),
                    retry=Retry(self.settings.max_retries, self.settings.retry_delay),
                    price=Price(price.input, price.output) if price else Price(),
                )
                self._graphs[(spec, method)] = builder.compile(checkpointer=self.checkpointer())
            return self._graphs[(spec, method)]

    def graph_for(self, config: dict[str, Any]):
        """The graph a run's config names (run_config records its model and structured-output method)."""
        return self.graph(config["metadata"]["model"], config["metadata"].get("structured_output"))

    def checkpointer(self):
        """What graphs run on: the saver, through which an async-durability run counts its unsaved checkpoints."""
        from savers.backpressure import BoundedSaver

        return BoundedSaver(self.saver) if self.settings.durability == "async" else self.saver

    def durability(self) -> dict[str, Any]:
        """How runs write their checkpoints (savers.backpressure.stream's arguments)."""
        return {"durability": self.settings.durability, "max_pending": self.settings.max_pending_checkpoints}

    def reader(self):
        """A graph for reading state only: any model will do, and offline needs no key."""
        return self.graph(DEFAULT_MODEL)

    @staticmethod
    def config(thread: str, checkpoint: str | None = None, *, spec: str | None = None, method: str | None = None,
               run: str | None = None, fresh: bool = False, budget: float | None = None,
               metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        configurable: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
        if checkpoint:
            configurable["checkpoint_id"] = checkpoint
        if fresh:
            configurable["fresh"] = True  # read by the graph's reply cache; recorded in the checkpoints too
        if budget is not None:
            configurable["budget"] = budget  # read before each model call (graphs/ask.py)
        meta = dict(metadata or {})
        if spec:
            # Recorded in every checkpoint's metadata, so `resume` uses the model the thread started with - and
            # the way it asked it for structured output: asked another way, a replay's requests differ from the
            # stored ones, and are paid for again (or fail, on a server that knows one way only).
            meta["model"] = spec
        if method:
            meta["structured_output"] = method
        if run:
            meta["run"] = run  # which command made these checkpoints: reason, resume, replay, fork
        return {"configurable": configurable, "metadata": meta}

    def run_config(self, thread: str, snapshot, run: str, checkpoint: str | None = None, fresh: bool = False,
                   metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """The config a run starts with: which model, which command, the budget in force."""
        spec = self.model_for(snapshot)
        self.check_spec_and_price(spec)
        return self.config(thread, checkpoint, spec=spec, method=self.method_for(snapshot), run=run, fresh=fresh,
                           budget=self.settings.budget, metadata=metadata)

    def edit_config(self, thread: str, snapshot, metadata: dict[str, Any], run: bool) -> dict[str, Any]:
        """The config a fork's edit is written with. When the fork runs on, its model is built first (spec, key,
        base URL): an unusable one writes nothing, where it failed after the edit was stored."""
        config = self.run_config(thread, snapshot, "fork", _checkpoint_id(snapshot), metadata=metadata)
        if run:
            self.graph_for(config)
        return config

    @staticmethod
    def with_spent_elsewhere(config: dict[str, Any], snapshot, checkpoints) -> dict[str, Any]:
        """A budgeted run's config with what the thread spent off the branch it runs on ("spent_elsewhere": its
        other branches - earlier forks and replays), so the budget caps the thread in all, not each branch
        (graphs/ask.py). Each checkpoint's usage is its branch's running total, so the thread's spend is the
        sum of what each checkpoint added to its parent's; the run's start already holds its own branch's."""
        def cost(values) -> float:
            return float(((values or {}).get("usage") or {}).get("cost_usd", 0.0))

        spent = {t.config["configurable"]["checkpoint_id"]: (cost(t.checkpoint["channel_values"]),
                                                              _parent_id(t)) for t in checkpoints}
        total = sum(max(0.0, own - (spent[parent][0] if parent in spent else 0.0))
                    for own, parent in spent.values())
        start = cost(snapshot.values) if snapshot is not None else 0.0
        configurable = {**config["configurable"], "spent_elsewhere": max(0.0, total - start)}
        return {**config, "configurable": configurable}

    @staticmethod
    def check_price(settings: Settings, spec: str) -> None:
        if settings.budget is not None and settings.price_of(spec) is None:
            raise ModelError(f"--budget needs a price for '{spec}': add it to [prices] in agent.toml "
                             "(US dollars per million input and output tokens)")

    @staticmethod
    def graph_input(snapshot, graph_input: Any) -> Any:
        """A thread paused at an interrupt (its budget ran out) goes on with a resume command, not plain None. A
        replay does not: a resume command goes on from the checkpoint itself, where the thread already went on
        (the one-writer rule refused it: WriterConflict); plain None makes LangGraph fork the checkpoint, and the
        paused call checks the budget again."""
        if graph_input is REPLAY:
            return None
        if graph_input is None and snapshot is not None and getattr(snapshot, "interrupts", ()):
            from langgraph.types import Command

            return Command(resume=True)
        return graph_input

    def check_model(self) -> None:
        """The configured model is usable - its spec, a price under a budget, its key and base URL - for a command
        that runs it, before the database is touched."""
        if self.settings.model:
            self.check_spec_and_price(self.settings.model)
            make_model(self.settings.model)

    def check_spec_and_price(self, spec: str) -> None:
        check_spec(spec)
        self.check_price(self.settings, spec)

    def method_for(self, snapshot) -> str:
        """The structured-output method of a run: the one set (flag, environment, agent.toml), else the one its
        thread was run with, else the default."""
        if "structured_output" in self.settings.model_fields_set or snapshot is None:
            return self.settings.structured_output
        return (snapshot.metadata or {}).get("structured_output") or self.settings.structured_output

    def model_for(self, snapshot) -> str:
        if self.settings.model:
            return self.settings.model
        recorded = (snapshot.metadata or {}).get("model") if snapshot is not None else None
        return recorded or DEFAULT_MODEL

    @staticmethod
    def exists(snapshot) -> bool:
        return snapshot is not None and snapshot.created_at is not None

    def plan_run(self, question: str, thread: str, snapshot, new: bool) -> tuple[str, Any]:
        """What `reason` must do: ("stored", None), ("resume", None) or ("start", input)."""
        from graphs.cot import fresh_state

        stored = snapshot.values.get("question", "") if self.exists(snapshot) else ""
        # No question stored yet: a run was cut off before its input was applied, so nothing ran; start over.
        if not stored or new:
            return "start", fresh_state(question)
        if stored != question:
            raise QuestionMismatch(
                f"thread '{thread}' already holds the question \"{stored}\": use a new thread id, "
                "or --new to start a new run on this thread"
            )
        return ("resume", None) if unfinished(snapshot) else ("stored", None)

    def result(self, thread: str, snapshot, error: str | None = None, from_store: bool = False,
               running: bool = False) -> RunResult:
        values = snapshot.values or {}
        plan, results = values.get("plan", []), values.get("results", [])
        error = error or task_error(snapshot)
        paused = next((i.value for i in getattr(snapshot, "interrupts", ()) if isinstance(i.value, dict)
                       and i.value.get("reason") == "budget_exceeded"), None)
        status: Status
        if running and unfinished(snapshot):
            status = "running"
        elif error:
            status = "failed"
        elif paused:
            status = "budget_exceeded"
            error = (f"budget exceeded: ${paused['spent_usd']:.6f} spent of ${paused['budget_usd']:.6f}; the next "
                     f"call needs about ${paused['next_call_usd']:.6f}. Resume with a larger --budget")
        else:
            status = "interrupted" if unfinished(snapshot) else "done"
        usage = values.get("usage") or {}
        return RunResult(
            thread_id=thread,
            checkpoint_id=snapshot.config["configurable"].get("checkpoint_id"),
            status=status,
            question=values.get("question", ""),
            answer=(values.get("answer") or None) if status == "done" else None,
            steps=[Step(d, results[i] if i < len(results) else None) for i, d in enumerate(plan)],
            usage=Usage(**{k: usage.get(k, 0) for k in Usage.__dataclass_fields__}),
            validation=values.get("validation") or None,
            next=list(snapshot.next),
            error=error,
            model=(snapshot.metadata or {}).get("model"),
            from_store=from_store,
        )

    def existing(self, thread: str, snapshot):
        """The snapshot of a thread that must exist, or ThreadNotFound."""
        if not self.exists(snapshot):
            raise ThreadNotFound(
                f"no thread '{thread}' in this database: start it with "
                f"`python -m agent reason \"...\" --thread {thread}` (or list them with `threads`)"
            )
        return snapshot

    @staticmethod
    def pick(thread: str, prefix: str, matches: list[str]) -> str:
        """The one checkpoint id a prefix names, or an error listing what it could mean."""
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise CheckpointNotFound(
                f"no checkpoint '{prefix}' in thread '{thread}': see `python -m agent history --thread {thread}`")
        shown = ", ".join(shortest_unique(matches).values()) if len(matches) <= 10 else \
            ", ".join(shortest_unique(matches[:10]).values()) + f", ... ({len(matches)} in all)"
        raise CheckpointNotFound(f"checkpoint '{prefix}' is ambiguous in thread '{thread}': it could be {shown}")

    @staticmethod
    def clean_prefix(checkpoint: str) -> str:
        _must_be_text(checkpoint, "the checkpoint id")
        prefix = (checkpoint or "").strip()
        if not prefix:
            raise BadInput("the checkpoint id is empty: give an id or a unique prefix of one (see `history`)")
        return prefix

    @staticmethod
    def check_limit(limit: int | None, what: str = "checkpoint") -> None:
        if limit is not None and (type(limit) is not int):
            raise BadInput(f"limit must be a whole number (int), not {type(limit).__name__}: {limit!r:.60}")
        if limit is not None and limit < 1:
            raise BadInput(f"--limit {limit} shows nothing: give 1 or more, or leave it out for every {what}")

    def history_page(self, thread: str, links: dict[str, str | None], limit: int | None,
                     before: str | None) -> Page:
        """Which checkpoints a `history` call shows, from the thread's parent links (`before`: id or prefix)."""
        if not links:
            self.existing(thread, None)
        if before is not None:
            prefix = self.clean_prefix(before)
            before = self.pick(thread, prefix, sorted(cid for cid in links if cid.startswith(prefix)))
        return history_page(links, limit, before)

    def thread_info(self, row, snapshot, running: bool = False) -> ThreadInfo:
        result = self.result(row.thread_id, snapshot, running=running)
        return ThreadInfo(
            thread_id=row.thread_id,
            status=result.status,
            question=result.question,
            answer=result.answer,
            updated_at=snapshot.created_at,
            checkpoints=row.checkpoints,
            branches=max(0, row.leaves - 1),
            head=row.head,
            usage=asdict(result.usage),
            error=result.error,
        )

    @staticmethod
    def replayable(thread: str, snapshot) -> None:
        if not unfinished(snapshot):
            checkpoint = snapshot.config["configurable"]["checkpoint_id"]
            raise BadInput(
                f"checkpoint {checkpoint[:13]} of thread '{thread}' ends its run: nothing runs after it; "
                "replay from an earlier checkpoint (see `history`)")

    def edit(self, snapshot, assignments: dict[str, Any], as_node: str | None) -> tuple[dict, str | None, dict]:
        """The update, the node it is attributed to, and the metadata that records the edit (`fork --set`)."""
        from graphs.cot import EDITABLE, NODES, numbers_as_text, plan_edit, state_problem
        from langgraph.constants import START

        if not isinstance(assignments, dict) or not all(isinstance(path, str) for path in assignments):
            raise BadInput(f"values must be a dict of path -> value (e.g. {{'plan.1': 'Multiply 17 by 23'}}), "
                           f"not {assignments!r:.60}")
        if not assignments:
            raise BadInput("nothing to change: give at least one --set path=value")
        values = dict(snapshot.values or {})
        if "question" not in values:  # the input checkpoint (step -1): its question is still a pending write
            raise BadInput(f"checkpoint {_checkpoint_id(snapshot)[:13]} holds no state yet (it is a run's input): "
                           "edit from its next checkpoint, step 0 or later (see `history`)")
        edited = values
        for path, value in assignments.items():
            edited = set_path(edited, path, value, EDITABLE)
        edited = numbers_as_text(edited)
        if problem := state_problem(edited):
            raise BadInput(f"cannot make this edit: {problem}")
        if not edited.get("plan") and any(path.split(".")[0] == "plan" for path in assignments):
            # Nothing to execute: the run would end "done" with no answer (validate never runs).
            raise BadInput("cannot make this edit: 'plan' must keep at least one step")
        update, node = plan_edit(values, edited)
        if as_node is not None:
            if as_node not in (*NODES, "input"):
                raise BadInput(f"--as-node '{as_node}' is not a node: use one of input, {', '.join(NODES)}")
            node = START if as_node == "input" else as_node
        # Checkpoint metadata keeps only plain values, so the edit is stored as JSON text.
        record = json.dumps(assignments, ensure_ascii=False, sort_keys=True)
        return update, node, {"edit": record, "as_node": node or ""}

    @staticmethod
    def check_new_thread(target: str, rows) -> str:
        target = _clean_thread(target, "--to")
        if rows:
            raise ThreadExists(f"thread '{target}' already exists: choose another name for the branch")
        return target


@contextmanager
def _exists_as_ours() -> Iterator[None]:
    """The saver's "target thread exists" (a branch raced another writer to the name) as the API's error."""
    from savers.threads import ThreadExists as Exists

    try:
        yield
    except Exists as exc:
        raise ThreadExists(str(exc)) from None


def unfinished(snapshot) -> bool:
    """Whether a run stands part-way at this checkpoint. `next` alone does not tell: a step that finished
    just before a crash has its writes stored but no checkpoint after it, and LangGraph then leaves it out of
    `next` while still listing it in `tasks`. Resuming applies those writes and goes on."""
    return bool(snapshot.next or snapshot.tasks)


def _parent_id(snapshot) -> str | None:
    return (snapshot.parent_config or {}).get("configurable", {}).get("checkpoint_id")


def _checkpoint_id(snapshot) -> str:
    return snapshot.config["configurable"]["checkpoint_id"]


STREAM_MODES = ["updates", "custom"]  # node updates, and the retries the graph reports as they happen


def _checkpoint_id_of(config: dict) -> str:
    return config["configurable"]["checkpoint_id"]


@contextmanager
def _busy_as_ours() -> Iterator[None]:
    from savers.errors import ThreadBusy as Busy

    try:
        yield
    except Busy as exc:
        raise ThreadBusy(str(exc)) from None


@contextmanager
def _unreadable_after(error: str | None) -> Iterator[None]:
    """After a failed run the database may itself be what failed: say so in one line."""
    try:
        yield
    except Exception as exc:
        if error is None:
            raise
        raise StorageError(f"the run failed ({error}) and the database cannot be read right now "
                           f"({type(exc).__name__}); the thread is intact: resume it later") from None


def _describe_failure(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"


def assignments_from(pairs: list[str]) -> dict[str, Any]:
    """`--set path=value` strings as the dict that `fork(values=...)` takes."""
    return dict(parse_assignment(pair) for pair in pairs)


class _Base:
    """Construction shared by Agent and AsyncAgent: settings from arguments, else config; nothing opened yet."""

    _stack_type: type

    def __init__(self, db: str | None = None, model: str | None = None, *,
                 settings: Settings | None = None, create: bool = True, plaintext_ok: bool = False,
                 **overrides: Any):
        """`plaintext_ok`: with AGENT_ENCRYPTION_KEY set, still open a database written without encryption
        (as it is: unencrypted) - for reading one, e.g. as the source of a `migrate` that encrypts it."""
        self._core = _Core(db, model, settings, overrides, create)
        self._core.plaintext_ok = plaintext_ok
        self._stack = self._stack_type()

    @property
    def settings(self) -> Settings:
        return self._core.settings

    @property
    def encrypted(self) -> bool:
        """Whether the open database is encrypted at rest (see AGENT_ENCRYPTION_KEY)."""
        return bool(getattr(getattr(self._core._saver, "serde", None), "encrypted", False))


class Agent(_Base):
    """The synchronous API. Use as a context manager; safe to share between threads of a service.

    with Agent(db="sqlite:///agent.db", model="offline") as agent:
        result = agent.reason("What is 2+3*4?", thread="t1")
    """

    _stack_type = ExitStack

    def __enter__(self) -> Agent:
        import savers

        self._core.opening()
        try:
            saver = savers.open_saver(self.settings.db, create=self._core.create,
                                      options=self._core.saver_options())
            self._core.opened(self._stack.enter_context(saver))
        except BaseException as exc:
            self._core.opened(None)
            if isinstance(exc, savers.StorageError):
                raise _wrap_storage(exc) from None
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self._core.closed()

    # -- reading ---------------------------------------------------------------------------------------------

    def _snapshot(self, thread: str, checkpoint: str | None = None):
        return self._core.reader().get_state(self._core.config(thread, checkpoint))

    def _resolve(self, thread: str, checkpoint: str) -> str:
        from savers.catalog import checkpoint_ids

        prefix = self._core.clean_prefix(checkpoint)
        return self._core.pick(thread, prefix, checkpoint_ids(self._core.saver, thread, prefix))

    def _at(self, thread: str, checkpoint: str | None):
        """The snapshot of an existing thread at a checkpoint (an id or unique prefix), default its head."""
        thread = _clean_thread(thread)
        head = self._core.existing(thread, self._snapshot(thread))
        return head if checkpoint is None else self._snapshot(thread, self._resolve(thread, checkpoint))

    def result(self, thread: str) -> RunResult:
        """Where a thread stands now, from the database alone (status `running` while a run holds it)."""
        thread = _clean_thread(thread)
        snapshot = self._core.existing(thread, self._snapshot(thread))
        return self._core.result(thread, snapshot, running=bool(self._running([thread])))

    def threads(self, *, limit: int | None = None) -> list[ThreadInfo]:
        """Every thread in the database, the one with the newest checkpoint first; with `limit`, only the first
        `limit` of them. Only the threads returned are read (each costs a read of its head's state: ~1 ms on
        SQLite), so a database of many threads lists its newest ones at once."""
        from savers.catalog import list_threads

        self._core.check_limit(limit, "thread")
        rows = list_threads(self._core.saver)[:limit]
        running = self._running([row.thread_id for row in rows])
        return [self._core.thread_info(row, self._snapshot(row.thread_id), row.thread_id in running) for row in rows]

    def history(self, thread: str, *, limit: int | None = None, before: str | None = None) -> HistoryPage:
        """Every checkpoint of a thread, on every branch, with parent links, in history order: oldest first,
        a parent always before its children (agent.history.history_order).

        `limit` and `before` page back from the end: the last `limit` checkpoints listed before `before`
        (an id or unique prefix). The result's `next_before` is the `before` of the page listed before it.
        Read 50 checkpoints at a time (agent.history.READ_PIECE): each holds the thread's whole state."""
        from savers.catalog import checkpoint_links

        self._core.check_limit(limit)
        thread = _clean_thread(thread)
        links = checkpoint_links(self._core.saver, thread)
        page = self._core.history_page(thread, links, limit, before)
        if not page.ids:
            return HistoryPage()
        rows = PageRows(page, links, functools.partial(self._core.config, thread))
        while (read := rows.next_read()) is not None:
            rows.add(*self._core.reader().get_state_history(**read))
        return HistoryPage(rows.finish(), page.next_before)

    def state(self, thread: str, checkpoint: str | None = None) -> StateView:
        """The full state at a checkpoint (default: the head) and what runs next."""
        snapshot = self._at(thread, checkpoint)
        parent_id = _parent_id(snapshot)
        parent = self._snapshot(thread, parent_id) if parent_id else None
        head_id = _checkpoint_id(self._snapshot(thread))
        return StateView(thread, checkpoint_info(snapshot, parent, head_id), self._core.result(thread, snapshot),
                         dict(snapshot.values or {}))

    def diff(self, thread: str, from_checkpoint: str, to_checkpoint: str | None = None, *,
             to_thread: str | None = None) -> Diff:
        """What changed from one checkpoint to another; the second may be on another branch or thread."""
        old = self._at(thread, from_checkpoint)
        other = _clean_thread(to_thread) if to_thread else thread
        new = self._at(other, to_checkpoint)
        return Diff(thread, _checkpoint_id(old), other, _checkpoint_id(new),
                    diff_values(old.values or {}, new.values or {}))

    # -- running ---------------------------------------------------------------------------------------------

    @contextmanager
    def _hold(self, thread: str) -> Iterator[None]:
        """This run's lock on the thread: a second run on it, in any process, gets ThreadBusy (exit 3)."""
        from savers.locks import locks_for

        with _busy_as_ours():
            hold = locks_for(self._core.saver).hold(thread)
            hold.__enter__()
        try:
            yield
        finally:
            hold.__exit__(None, None, None)

    def _running(self, threads: list[str]) -> set[str]:
        from savers.locks import locks_for

        return locks_for(self._core.saver).running(threads)

    def _run(self, config: dict[str, Any], graph_input: Any, snapshot, on_event: OnEvent | None,
             resuming: bool) -> RunResult:
        from savers import backpressure

        thread = config["configurable"]["thread_id"]
        if "budget" in config["configurable"]:
            config = self._core.with_spent_elsewhere(
                config, snapshot, list(self._core.saver.list(self._core.config(thread))))
        graph = self._core.graph_for(config)  # first: a model it cannot use (no key) fails before "Resuming from"
        tracker = _EventTracker(on_event, snapshot, resuming=resuming)
        error = None
        try:
            for mode, chunk in backpressure.stream(graph, self._core.graph_input(snapshot, graph_input), config,
                                                   stream_mode=STREAM_MODES, **self._core.durability()):
                tracker.feed(mode, chunk)
        except Exception as exc:  # the run failed; its checkpoints stand and it can be resumed
            error = _describe_failure(exc)
        if error is None:
            self._retain(thread)
        with _unreadable_after(error):
            return self._core.result(thread, graph.get_state(self._core.config(thread)), error)

    def reason(self, question: str, thread: str, *, new: bool = False,
               on_event: OnEvent | None = None) -> RunResult:
        """Answer `question` on `thread`: start it, resume it if it was cut short, or return its stored answer."""
        question, thread = clean_question(question), _clean_thread(thread)
        with self._hold(thread):
            snapshot = self._snapshot(thread)
            action, graph_input = self._core.plan_run(question, thread, snapshot, new)
            if action == "stored":
                return self._core.result(thread, snapshot, from_store=True)
            config = self._core.run_config(thread, snapshot, "reason")
            return self._run(config, graph_input, snapshot, on_event, resuming=action == "resume")

    def resume(self, thread: str, *, on_event: OnEvent | None = None) -> RunResult:
        """Continue a thread from its last checkpoint; a finished thread returns its stored answer."""
        thread = _clean_thread(thread)
        with self._hold(thread):
            snapshot = self._core.existing(thread, self._snapshot(thread))
            if not unfinished(snapshot):
                return self._core.result(thread, snapshot, from_store=True)
            return self._run(self._core.run_config(thread, snapshot, "resume"), None, snapshot, on_event,
                             resuming=True)

    def replay(self, thread: str, checkpoint: str, *, fresh: bool = False,
               on_event: OnEvent | None = None) -> RunResult:
        """Run the graph again from a past checkpoint, as a new branch of the same thread.

        Unchanged requests are answered from the reply cache (no model call) unless `fresh`.
        """
        with self._hold(_clean_thread(thread)):
            snapshot = self._at(thread, checkpoint)
            self._core.replayable(thread, snapshot)
            config = self._core.run_config(thread, snapshot, "replay", _checkpoint_id(snapshot), fresh=fresh)
            return self._run(config, REPLAY, snapshot, on_event, resuming=True)

    def fork(self, thread: str, checkpoint: str, values: dict[str, Any], *, as_node: str | None = None,
             run: bool = True, fresh: bool = False, on_event: OnEvent | None = None) -> RunResult:
        """Edit the state at a checkpoint (paths like "plan.2", 1-based) and run on from the edit.

        What depended on an edited field is dropped and redone; only requests that changed reach the model.
        """
        with self._hold(_clean_thread(thread)):
            snapshot = self._at(thread, checkpoint)
            update, node, metadata = self._core.edit(snapshot, values, as_node)
            config = self._core.edit_config(thread, snapshot, metadata, run)
            edited = self._snapshot(thread, _checkpoint_id_of(self._core.reader().update_state(config, update, node)))
            if not run or not unfinished(edited):
                return self._core.result(thread, edited)
            config = self._core.run_config(thread, snapshot, "fork", _checkpoint_id(edited), fresh=fresh)
            return self._run(config, None, edited, on_event, resuming=True)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _exists(self, thread: str) -> bool:
        return self._core.exists(self._snapshot(thread))

    def _erase(self, thread: str, replies: bool = True) -> None:
        """Remove a thread's rows; with `replies` (a delete) the replies it paid for in the cache too. A thread
        replaced by an import or rewritten by prune keeps them: its replays are answered from them."""
        self._core.saver.delete_thread(thread)
        cache = getattr(self._core.saver, "response_cache", None)
        if replies and cache is not None:
            cache.forget(thread)

    def _replace(self, thread: str) -> None:
        self._erase(thread, replies=False)

    def delete(self, thread: str) -> None:
        """Remove a thread: its checkpoints, writes, the replies it paid for in the cache, and its lock."""
        thread = _clean_thread(thread)
        with self._hold(thread):
            self._core.existing(thread, self._snapshot(thread))
            self._erase(thread)

    def export(self, out, threads: list[str] | None = None,
               on_checkpoint: Callable[[int], None] | None = None) -> TransferReport:
        """Write threads (default: all) to `out` in the versioned JSON Lines export format, streamed;
        `on_checkpoint(total)` is called as each checkpoint is written."""
        from savers.catalog import list_threads

        check_threads(threads)
        counts = {row.thread_id: row.checkpoints for row in list_threads(self._core.saver)}
        return export_threads(self._core.saver, threads or list(counts), out, counts, on_checkpoint)

    def import_file(self, path, *, renames: dict[str, str] | None = None, overwrite: bool = False,
                    on_checkpoint: Callable[[int], None] | None = None) -> TransferReport:
        """Load an export file; all or nothing. Existing thread ids are an error unless renamed or `overwrite`.
        `on_checkpoint(total)` is called as each checkpoint is written, once the whole file is checked."""
        return import_file(self._core.saver, _file_path(path), renames or {}, overwrite, self._exists, self._replace,
                           on_checkpoint=on_checkpoint)

    def _trim(self, name: str, policy: RetentionPolicy, workdir: Path, dry_run: bool) -> tuple[int, int]:
        """(checkpoints, bytes) the policy removes from one thread; the caller holds the thread's lock."""
        import time

        if policy.keep_completed and self.result(name).status == "done":
            return 0, 0
        gone = checkpoints_to_remove(self.history(name), policy, time.time())
        if not gone:
            return 0, 0
        return len(gone), trim_thread(self._core.saver, name, set(gone), workdir, self._exists, self._replace, dry_run)

    def prune(self, policy: RetentionPolicy, *, thread: str | None = None, dry_run: bool = False) -> PruneReport:
        """Apply a retention policy to one thread or all; `dry_run` only says what would go."""
        import tempfile

        from savers.catalog import database_file, file_bytes, list_threads, reclaim_space

        names = [_clean_thread(thread)] if thread else [r.thread_id for r in list_threads(self._core.saver)]
        if thread:
            self._core.existing(names[0], self._snapshot(names[0]))
        path = database_file(self._core.saver)
        before = file_bytes(path)
        removed, freed = {}, 0
        with tempfile.TemporaryDirectory(prefix="agent-prune-") as workdir:
            for name in names:
                with self._hold(name):
                    count, size = self._trim(name, policy, Path(workdir), dry_run)
                if count:
                    removed[name], freed = count, freed + size
        if removed and not dry_run:
            reclaim_space(self._core.saver)
        # A dry run changes no row; the file may still grow by the thread leases it took, which is not the prune's.
        return PruneReport(dry_run, removed, sum(removed.values()), freed, before,
                           before if dry_run else file_bytes(path))

    def _retain(self, thread: str) -> None:
        """The retention policy from config, applied to a thread after a run on it (lock still held)."""
        import tempfile

        if (policy := self._core.retention()) is not None:
            with tempfile.TemporaryDirectory(prefix="agent-prune-") as workdir:
                self._trim(thread, policy, Path(workdir), dry_run=False)

    def migrate_to(self, target: Agent, threads: list[str] | None = None,
                   on_checkpoint: Callable[[int], None] | None = None) -> TransferReport:
        """Copy threads (default: all) into another database, e.g. SQLite to Postgres; all or nothing.
        `on_checkpoint(total)` is called as each checkpoint is written."""
        from savers.catalog import list_threads

        check_threads(threads)
        counts = {row.thread_id: row.checkpoints for row in list_threads(self._core.saver)}
        return migrate(self._core.saver, target._core.saver, threads or list(counts), counts, target._exists,
                       target._erase, on_checkpoint)

    def branch(self, thread: str, checkpoint: str, to: str) -> ThreadInfo:
        """A new thread `to` whose history is `thread`'s lineage up to `checkpoint`; `thread` is untouched."""
        from savers.catalog import list_threads

        snapshot = self._at(thread, checkpoint)
        target = self._core.check_new_thread(to, list_threads(self._core.saver, _clean_thread(to, "--to")))
        origin = f"{thread}@{_checkpoint_id(snapshot)}"
        with _exists_as_ours():
            self._core.saver.copy_thread(thread, target, up_to=_checkpoint_id(snapshot), metadata={"branch_of": origin})
        return self._core.thread_info(list_threads(self._core.saver, target)[0], self._snapshot(target))


class AsyncAgent(_Base):
    """The asynchronous twin of `Agent`: the same methods, awaited.

    async with AsyncAgent(db="postgresql://...", model="offline") as agent:
        result = await agent.reason("What is 2+3*4?", thread="t1")
    """

    _stack_type = AsyncExitStack

    async def __aenter__(self) -> AsyncAgent:
        import savers

        self._core.opening()
        try:
            saver = savers.open_async_saver(self.settings.db, create=self._core.create,
                                            options=self._core.saver_options())
            self._core.opened(await self._stack.enter_async_context(saver), asyncio.get_running_loop())
        except BaseException as exc:
            self._core.opened(None)
            if isinstance(exc, savers.StorageError):
                raise _wrap_storage(exc) from None
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self._stack.aclose()
        finally:
            self._core.closed()

    # -- reading ---------------------------------------------------------------------------------------------

    async def _snapshot(self, thread: str, checkpoint: str | None = None):
        return await self._core.reader().aget_state(self._core.config(thread, checkpoint))

    async def _resolve(self, thread: str, checkpoint: str) -> str:
        from savers.catalog import acheckpoint_ids

        prefix = self._core.clean_prefix(checkpoint)
        return self._core.pick(thread, prefix, await acheckpoint_ids(self._core.saver, thread, prefix))

    async def _at(self, thread: str, checkpoint: str | None):
        thread = _clean_thread(thread)
        head = self._core.existing(thread, await self._snapshot(thread))
        return head if checkpoint is None else await self._snapshot(thread, await self._resolve(thread, checkpoint))

    async def result(self, thread: str) -> RunResult:
        """Where a thread stands now, from the database alone (status `running` while a run holds it)."""
        thread = _clean_thread(thread)
        snapshot = self._core.existing(thread, await self._snapshot(thread))
        return self._core.result(thread, snapshot, running=bool(await self._running([thread])))

    async def threads(self, *, limit: int | None = None) -> list[ThreadInfo]:
        from savers.catalog import alist_threads

        self._core.check_limit(limit, "thread")
        rows = (await alist_threads(self._core.saver))[:limit]
        running = await self._running([row.thread_id for row in rows])
        return [self._core.thread_info(row, await self._snapshot(row.thread_id), row.thread_id in running)
                for row in rows]

    async def history(self, thread: str, *, limit: int | None = None, before: str | None = None) -> HistoryPage:
        from savers.catalog import acheckpoint_links

        self._core.check_limit(limit)
        thread = _clean_thread(thread)
        links = await acheckpoint_links(self._core.saver, thread)
        page = self._core.history_page(thread, links, limit, before)
        if not page.ids:
            return HistoryPage()
        return HistoryPage(await self._page_rows(thread, links, page), page.next_before)

    async def _page_rows(self, thread: str, links: dict[str, str | None], page,
                         each: Callable[[Any], None] | None = None) -> list[CheckpointInfo]:
        """A history page's rows, read a piece at a time; `each` sees every snapshot read (the web UI notes
        each checkpoint's usage and error from them in the same pass)."""
        rows = PageRows(page, links, functools.partial(self._core.config, thread))
        while (read := rows.next_read()) is not None:
            piece = [s async for s in self._core.reader().aget_state_history(**read)]
            for snapshot in piece if each else ():
                each(snapshot)
            rows.add(*piece)
        return rows.finish()

    async def state(self, thread: str, checkpoint: str | None = None) -> StateView:
        snapshot = await self._at(thread, checkpoint)
        parent_id = _parent_id(snapshot)
        parent = await self._snapshot(thread, parent_id) if parent_id else None
        head_id = _checkpoint_id(await self._snapshot(thread))
        return StateView(thread, checkpoint_info(snapshot, parent, head_id), self._core.result(thread, snapshot),
                         dict(snapshot.values or {}))

    async def diff(self, thread: str, from_checkpoint: str, to_checkpoint: str | None = None, *,
                   to_thread: str | None = None) -> Diff:
        old = await self._at(thread, from_checkpoint)
        other = _clean_thread(to_thread) if to_thread else thread
        new = await self._at(other, to_checkpoint)
        return Diff(thread, _checkpoint_id(old), other, _checkpoint_id(new),
                    diff_values(old.values or {}, new.values or {}))

    # -- running ---------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _hold(self, thread: str) -> AsyncIterator[None]:
        from savers.locks import locks_for

        with _busy_as_ours():
            hold = locks_for(self._core.saver).ahold(thread)
            await hold.__aenter__()
        try:
            yield
        finally:
            await hold.__aexit__(None, None, None)

    async def _running(self, threads: list[str]) -> set[str]:
        from savers.locks import locks_for

        return await locks_for(self._core.saver).arunning(threads)

    async def _run(self, config: dict[str, Any], graph_input: Any, snapshot, on_event: OnEvent | None,
                   resuming: bool) -> RunResult:
        from savers import backpressure

        thread = config["configurable"]["thread_id"]
        if "budget" in config["configurable"]:
            config = self._core.with_spent_elsewhere(
                config, snapshot, [t async for t in self._core.saver.alist(self._core.config(thread))])
        graph = self._core.graph_for(config)  # first: a model it cannot use (no key) fails before "Resuming from"
        tracker = _EventTracker(on_event, snapshot, resuming=resuming)
        error = None
        try:
            async for mode, chunk in backpressure.astream(graph, self._core.graph_input(snapshot, graph_input),
                                                          config, stream_mode=STREAM_MODES, **self._core.durability()):
                tracker.feed(mode, chunk)
        except Exception as exc:  # the run failed; its checkpoints stand and it can be resumed
            error = _describe_failure(exc)
        if error is None:
            await self._retain(thread)
        with _unreadable_after(error):
            return self._core.result(thread, await graph.aget_state(self._core.config(thread)), error)

    async def reason(self, question: str, thread: str, *, new: bool = False,
                     on_event: OnEvent | None = None) -> RunResult:
        """Answer `question` on `thread`: start it, resume it if it was cut short, or return its stored answer."""
        question, thread = clean_question(question), _clean_thread(thread)
        async with self._hold(thread):
            snapshot = await self._snapshot(thread)
            action, graph_input = self._core.plan_run(question, thread, snapshot, new)
            if action == "stored":
                return self._core.result(thread, snapshot, from_store=True)
            config = self._core.run_config(thread, snapshot, "reason")
            return await self._run(config, graph_input, snapshot, on_event, resuming=action == "resume")

    async def resume(self, thread: str, *, on_event: OnEvent | None = None) -> RunResult:
        """Continue a thread from its last checkpoint; a finished thread returns its stored answer."""
        thread = _clean_thread(thread)
        async with self._hold(thread):
            snapshot = self._core.existing(thread, await self._snapshot(thread))
            if not unfinished(snapshot):
                return self._core.result(thread, snapshot, from_store=True)
            return await self._run(self._core.run_config(thread, snapshot, "resume"), None, snapshot, on_event,
                                   resuming=True)

    async def replay(self, thread: str, checkpoint: str, *, fresh: bool = False,
                     on_event: OnEvent | None = None) -> RunResult:
        async with self._hold(_clean_thread(thread)):
            snapshot = await self._at(thread, checkpoint)
            self._core.replayable(thread, snapshot)
            config = self._core.run_config(thread, snapshot, "replay", _checkpoint_id(snapshot), fresh=fresh)
            return await self._run(config, REPLAY, snapshot, on_event, resuming=True)

    async def fork(self, thread: str, checkpoint: str, values: dict[str, Any], *, as_node: str | None = None,
                   run: bool = True, fresh: bool = False, on_event: OnEvent | None = None) -> RunResult:
        async with self._hold(_clean_thread(thread)):
            snapshot = await self._at(thread, checkpoint)
            update, node, metadata = self._core.edit(snapshot, values, as_node)
            config = self._core.edit_config(thread, snapshot, metadata, run)
            stored = await self._core.reader().aupdate_state(config, update, node)
            edited = await self._snapshot(thread, _checkpoint_id_of(stored))
            if not run or not unfinished(edited):
                return self._core.result(thread, edited)
            config = self._core.run_config(thread, snapshot, "fork", _checkpoint_id(edited), fresh=fresh)
            return await self._run(config, None, edited, on_event, resuming=True)

    # -- lifecycle: the transfer code is synchronous; it runs in a worker thread, through the async saver's
    # own synchronous wrappers, while this event loop keeps serving them.

    async def _exists(self, thread: str) -> bool:
        return self._core.exists(await self._snapshot(thread))

    async def _erase(self, thread: str, replies: bool = True) -> None:
        """As Agent._erase."""
        await self._core.saver.adelete_thread(thread)
        cache = getattr(self._core.saver, "response_cache", None)
        if replies and cache is not None:
            await cache.aforget(thread)

    async def _replace(self, thread: str) -> None:
        await self._erase(thread, replies=False)

    def _blocking(self, coroutine_function):
        """A synchronous stand-in for an async method, for code running in a worker thread."""
        loop = asyncio.get_running_loop()
        return lambda *args: asyncio.run_coroutine_threadsafe(coroutine_function(*args), loop).result()

    async def _known(self) -> list[str]:
        from savers.catalog import alist_threads

        return [row.thread_id for row in await alist_threads(self._core.saver)]

    async def delete(self, thread: str) -> None:
        thread = _clean_thread(thread)
        async with self._hold(thread):
            self._core.existing(thread, await self._snapshot(thread))
            await self._erase(thread)

    async def _trim(self, name: str, policy: RetentionPolicy, workdir: Path, dry_run: bool) -> tuple[int, int]:
        import time

        if policy.keep_completed and (await self.result(name)).status == "done":
            return 0, 0
        gone = checkpoints_to_remove(await self.history(name), policy, time.time())
        if not gone:
            return 0, 0
        freed = await asyncio.to_thread(trim_thread, self._core.saver, name, set(gone), workdir,
                                        self._blocking(self._exists), self._blocking(self._replace), dry_run)
        return len(gone), freed

    async def _retain(self, thread: str) -> None:
        import tempfile

        if (policy := self._core.retention()) is not None:
            with tempfile.TemporaryDirectory(prefix="agent-prune-") as workdir:
                await self._trim(thread, policy, Path(workdir), dry_run=False)

    async def prune(self, policy: RetentionPolicy, *, thread: str | None = None,
                    dry_run: bool = False) -> PruneReport:
        import tempfile

        from savers.catalog import adatabase_file, areclaim_space, file_bytes

        names = [_clean_thread(thread)] if thread else await self._known()
        if thread:
            self._core.existing(names[0], await self._snapshot(names[0]))
        path = await adatabase_file(self._core.saver)
        before = file_bytes(path)
        removed, freed = {}, 0
        with tempfile.TemporaryDirectory(prefix="agent-prune-") as workdir:
            for name in names:
                async with self._hold(name):
                    count, size = await self._trim(name, policy, Path(workdir), dry_run)
                if count:
                    removed[name], freed = count, freed + size
        if removed and not dry_run:
            await areclaim_space(self._core.saver)
        # A dry run changes no row; the file may still grow by the thread leases it took, which is not the prune's.
        return PruneReport(dry_run, removed, sum(removed.values()), freed, before,
                           before if dry_run else file_bytes(path))

    async def export(self, out, threads: list[str] | None = None,
                     on_checkpoint: Callable[[int], None] | None = None) -> TransferReport:
        from savers.catalog import alist_threads

        check_threads(threads)
        counts = {row.thread_id: row.checkpoints for row in await alist_threads(self._core.saver)}
        return await asyncio.to_thread(export_threads, self._core.saver, threads or list(counts), out, counts,
                                       on_checkpoint)

    async def import_file(self, path, *, renames: dict[str, str] | None = None, overwrite: bool = False,
                          on_checkpoint: Callable[[int], None] | None = None) -> TransferReport:
        return await asyncio.to_thread(import_file, self._core.saver, _file_path(path), renames or {}, overwrite,
                                       self._blocking(self._exists), self._blocking(self._replace),
                                       on_checkpoint=on_checkpoint)

    async def migrate_to(self, target: AsyncAgent, threads: list[str] | None = None,
                         on_checkpoint: Callable[[int], None] | None = None) -> TransferReport:
        from savers.catalog import alist_threads

        check_threads(threads)
        counts = {row.thread_id: row.checkpoints for row in await alist_threads(self._core.saver)}
        return await asyncio.to_thread(migrate, self._core.saver, target._core.saver, threads or list(counts),
                                       counts, self._blocking(target._exists), self._blocking(target._erase),
                                       on_checkpoint)

    async def branch(self, thread: str, checkpoint: str, to: str) -> ThreadInfo:
        from savers.catalog import alist_threads

        snapshot = await self._at(thread, checkpoint)
        target = self._core.check_new_thread(to, await alist_threads(self._core.saver, _clean_thread(to, "--to")))
        origin = f"{thread}@{_checkpoint_id(snapshot)}"
        with _exists_as_ours():
            await self._core.saver.acopy_thread(thread, target, up_to=_checkpoint_id(snapshot),
                                                metadata={"branch_of": origin})
        return self._core.thread_info((await alist_threads(self._core.saver, target))[0], await self._snapshot(target))
