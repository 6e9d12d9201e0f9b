"""The Python API: `Agent` (sync) and `AsyncAgent` (async), the same methods on one shared core.

Every CLI command calls these; results are typed objects, never bare dicts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agent.config import DEFAULT_MODEL, Settings, load_settings
from agent.errors import BadInput, QuestionMismatch, StorageError, ThreadNotFound
from agent.models import check_spec, make_model

Status = Literal["done", "interrupted", "failed"]


@dataclass(frozen=True)
class Usage:
    """What a thread has cost so far: model calls and tokens, over every run on it."""

    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


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

    kind: Literal["resume", "plan", "step", "validation"]
    steps: list[str] = field(default_factory=list)  # plan
    number: int = 0  # step: 1-based
    description: str = ""  # step
    result: str = ""  # step
    ok: bool | None = None  # validation
    reason: str = ""  # validation
    revision: int = 0  # plan: 0 for the first plan, n for the n-th revision


OnEvent = Callable[[Event], None]


def clean_question(question: str) -> str:
    # Prompts are line-oriented; a question is one line of text.
    text = " ".join((question or "").split())
    if not text:
        raise BadInput("the question is empty: ask something, e.g. \"What is 17*23+4?\"")
    return text


def _clean_thread(thread: str) -> str:
    text = (thread or "").strip()
    if not text:
        raise BadInput("the thread id is empty: name the thread with --thread, e.g. --thread t1")
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

    def feed(self, chunk: dict[str, Any]) -> None:
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
    """What Agent and AsyncAgent share: settings, the graph per model, and reading snapshots into results."""

    def __init__(self, db: str | None, model: str | None, settings: Settings | None, overrides: dict[str, Any],
                 create: bool = True):
        if settings is None:
            settings = load_settings({"db": db, "model": model, **overrides})
        elif db is not None or model is not None or overrides:
            settings = settings.model_copy(update={k: v for k, v in
                                                   {"db": db, "model": model, **overrides}.items() if v is not None})
        if settings.model is not None:
            check_spec(settings.model)
        self.create = create
        self.settings = settings
        self.saver: Any = None
        self._graphs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def graph(self, spec: str):
        """The compiled graph for a model spec, built once and shared by every thread of the service."""
        with self._lock:
            if spec not in self._graphs:
                from graphs.cot import build_graph

                builder = build_graph(
                    make_model(spec),
                    structured_output=self.settings.structured_output,
                    max_revisions=self.settings.max_revisions,
                )
                self._graphs[spec] = builder.compile(checkpointer=self.saver)
            return self._graphs[spec]

    def reader(self):
        """A graph for reading state only: any model will do, and offline needs no key."""
        return self.graph(DEFAULT_MODEL)

    @staticmethod
    def config(thread: str, spec: str | None = None) -> dict[str, Any]:
        config: dict[str, Any] = {"configurable": {"thread_id": thread}}
        if spec:
            # Recorded in every checkpoint's metadata, so `resume` uses the model the thread started with.
            config["metadata"] = {"model": spec}
        return config

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

        if not self.exists(snapshot) or new:
            return "start", fresh_state(question)
        stored = snapshot.values.get("question", "")
        if stored != question:
            raise QuestionMismatch(
                f"thread '{thread}' already holds the question \"{stored}\": use a new thread id, "
                "or --new to start a new run on this thread"
            )
        return ("stored", None) if not snapshot.next else ("resume", None)

    def result(self, thread: str, snapshot, error: str | None = None, from_store: bool = False) -> RunResult:
        values = snapshot.values or {}
        plan, results = values.get("plan", []), values.get("results", [])
        task_error = next((str(t.error) for t in snapshot.tasks if getattr(t, "error", None)), None)
        error = error or task_error
        status: Status = "failed" if error else ("interrupted" if snapshot.next else "done")
        usage = values.get("usage") or {}
        return RunResult(
            thread_id=thread,
            checkpoint_id=snapshot.config["configurable"].get("checkpoint_id"),
            status=status,
            question=values.get("question", ""),
            answer=values.get("answer") or None if status == "done" else None,
            steps=[Step(d, results[i] if i < len(results) else None) for i, d in enumerate(plan)],
            usage=Usage(**{k: usage.get(k, 0) for k in ("llm_calls", "input_tokens", "output_tokens")}),
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
                f"`python -m agent reason \"...\" --thread {thread}`"
            )
        return snapshot


def _describe_failure(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"


class Agent:
    """The synchronous API. Use as a context manager; safe to share between threads of a service.

    with Agent(db="sqlite:///agent.db", model="offline") as agent:
        result = agent.reason("What is 2+3*4?", thread="t1")
    """

    def __init__(self, db: str | None = None, model: str | None = None, *,
                 settings: Settings | None = None, create: bool = True, **overrides: Any):
        self._core = _Core(db, model, settings, overrides, create)
        self._stack = ExitStack()

    @property
    def settings(self) -> Settings:
        return self._core.settings

    def __enter__(self) -> Agent:
        import savers

        try:
            saver = savers.open_saver(self.settings.db, create=self._core.create)
            self._core.saver = self._stack.enter_context(saver)
        except savers.StorageError as exc:
            raise _wrap_storage(exc) from None
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def _snapshot(self, thread: str):
        return self._core.reader().get_state(self._core.config(thread))

    def _run(self, thread: str, spec: str, graph_input: Any, snapshot, on_event: OnEvent | None) -> RunResult:
        tracker = _EventTracker(on_event, snapshot, resuming=graph_input is None)
        graph = self._core.graph(spec)
        config = self._core.config(thread, spec)
        error = None
        try:
            for chunk in graph.stream(graph_input, config, stream_mode="updates", durability="sync"):
                tracker.feed(chunk)
        except Exception as exc:  # the run failed; its checkpoints stand and it can be resumed
            error = _describe_failure(exc)
        return self._core.result(thread, graph.get_state(self._core.config(thread)), error)

    def reason(self, question: str, thread: str, *, new: bool = False,
               on_event: OnEvent | None = None) -> RunResult:
        """Answer `question` on `thread`: start it, resume it if it was cut short, or return its stored answer."""
        question, thread = clean_question(question), _clean_thread(thread)
        snapshot = self._snapshot(thread)
        action, graph_input = self._core.plan_run(question, thread, snapshot, new)
        if action == "stored":
            return self._core.result(thread, snapshot, from_store=True)
        return self._run(thread, self._core.model_for(snapshot), graph_input, snapshot, on_event)

    def resume(self, thread: str, *, on_event: OnEvent | None = None) -> RunResult:
        """Continue a thread from its last checkpoint; a finished thread returns its stored answer."""
        thread = _clean_thread(thread)
        snapshot = self._core.existing(thread, self._snapshot(thread))
        if not snapshot.next:
            return self._core.result(thread, snapshot, from_store=True)
        return self._run(thread, self._core.model_for(snapshot), None, snapshot, on_event)

    def result(self, thread: str) -> RunResult:
        """Where a thread stands now, from the database alone."""
        thread = _clean_thread(thread)
        return self._core.result(thread, self._core.existing(thread, self._snapshot(thread)))


class AsyncAgent:
    """The asynchronous twin of `Agent`: the same methods, awaited.

    async with AsyncAgent(db="postgresql://...", model="offline") as agent:
        result = await agent.reason("What is 2+3*4?", thread="t1")
    """

    def __init__(self, db: str | None = None, model: str | None = None, *,
                 settings: Settings | None = None, create: bool = True, **overrides: Any):
        self._core = _Core(db, model, settings, overrides, create)
        self._stack = AsyncExitStack()

    @property
    def settings(self) -> Settings:
        return self._core.settings

    async def __aenter__(self) -> AsyncAgent:
        import savers

        try:
            saver = savers.open_async_saver(self.settings.db, create=self._core.create)
            self._core.saver = await self._stack.enter_async_context(saver)
        except savers.StorageError as exc:
            raise _wrap_storage(exc) from None
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        await self._stack.aclose()

    async def _snapshot(self, thread: str):
        return await self._core.reader().aget_state(self._core.config(thread))

    async def _run(self, thread: str, spec: str, graph_input: Any, snapshot,
                   on_event: OnEvent | None) -> RunResult:
        tracker = _EventTracker(on_event, snapshot, resuming=graph_input is None)
        graph = self._core.graph(spec)
        config = self._core.config(thread, spec)
        error = None
        try:
            async for chunk in graph.astream(graph_input, config, stream_mode="updates", durability="sync"):
                tracker.feed(chunk)
        except Exception as exc:  # the run failed; its checkpoints stand and it can be resumed
            error = _describe_failure(exc)
        return self._core.result(thread, await graph.aget_state(self._core.config(thread)), error)

    async def reason(self, question: str, thread: str, *, new: bool = False,
                     on_event: OnEvent | None = None) -> RunResult:
        """Answer `question` on `thread`: start it, resume it if it was cut short, or return its stored answer."""
        question, thread = clean_question(question), _clean_thread(thread)
        snapshot = await self._snapshot(thread)
        action, graph_input = self._core.plan_run(question, thread, snapshot, new)
        if action == "stored":
            return self._core.result(thread, snapshot, from_store=True)
        return await self._run(thread, self._core.model_for(snapshot), graph_input, snapshot, on_event)

    async def resume(self, thread: str, *, on_event: OnEvent | None = None) -> RunResult:
        """Continue a thread from its last checkpoint; a finished thread returns its stored answer."""
        thread = _clean_thread(thread)
        snapshot = self._core.existing(thread, await self._snapshot(thread))
        if not snapshot.next:
            return self._core.result(thread, snapshot, from_store=True)
        return await self._run(thread, self._core.model_for(snapshot), None, snapshot, on_event)

    async def result(self, thread: str) -> RunResult:
        """Where a thread stands now, from the database alone."""
        thread = _clean_thread(thread)
        return self._core.result(thread, self._core.existing(thread, await self._snapshot(thread)))
