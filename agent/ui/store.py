"""What the web UI reads from the database, on top of AsyncAgent: a page of threads, a whole thread's record
(every checkpoint's row, usage and error), searches in its states, the model call behind a step, and the
threads branched off a thread.

The public API answers one question at a time; a page needs many at once. What it lacks (paged threads,
history with values) is done here through the agent's own saver and reader graph, in one place.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from agent.api import AsyncAgent, task_error
from agent.history import READ_PIECE, CheckpointInfo, ThreadInfo
from graphs.ask import request_key

PAGE_SIZE = 50
# A thread's record is rebuilt when its newest checkpoint or its count changes, and at the latest after
# this long: a run that fails adds its error to the last checkpoint without adding a checkpoint.
RECORD_TTL_S = 10.0
# Records kept for threads looked at lately, and searches kept per record. A record holds no states (each
# checkpoint's holds the thread's whole state so far: for a thread of 2,000 steps the states took 813 MB), so
# one is small; a search reads the states again, a piece at a time.
RECORDS_KEPT = 32
SEARCHES_KEPT = 8
# A filtered thread list reads the head of every thread it has not seen yet, this long per request at most;
# the page says how far it got and asks again.
SCAN_BUDGET_S = 1.5


@dataclass(frozen=True)
class ThreadSummary(ThreadInfo):
    """A row of the thread list: `threads --json`'s fields and the steps carried out of the plan."""

    steps: str = ""  # "2/4": results of the current plan


@dataclass(frozen=True)
class ThreadPage:
    threads: list[ThreadSummary]
    total: int  # threads that match, as far as the scan got
    scanned: int  # threads looked at so far (== total threads when the scan is complete)
    all_threads: int
    page: int
    pages: int

    @property
    def complete(self) -> bool:
        return self.scanned >= self.all_threads


@dataclass
class Record:
    """A whole thread as stored: rows oldest first, and each checkpoint's usage so far (what its state says
    was spent), its model, and its error (if its step failed). Not its state: Store.snapshot reads one."""

    thread: str
    rows: list[CheckpointInfo]
    usage: dict[str, dict]
    errors: dict[str, str]
    models: dict[str, str]
    head: str
    branches_into: list[tuple[str, str]] = field(default_factory=list)  # (thread, checkpoint it was copied from)
    read_at: float = 0.0
    found: OrderedDict[str, frozenset[str]] = field(default_factory=OrderedDict)  # search -> checkpoints

    def __post_init__(self) -> None:
        self._by_id = {r.checkpoint_id: r for r in self.rows}

    def row(self, checkpoint_id: str) -> CheckpointInfo | None:
        return self._by_id.get(checkpoint_id)

    @property
    def branch_of(self) -> tuple[str, str] | None:
        origin = next((r.branch_of for r in self.rows if r.branch_of), None)
        if not origin or "@" not in origin:
            return None
        thread, _, checkpoint = origin.rpartition("@")
        return thread, checkpoint


@dataclass(frozen=True)
class ModelCall:
    """The request a step sent to the model, rebuilt from the state it started from, and the stored reply."""

    node: str
    schema: str
    messages: list[tuple[str, str]]
    reply: dict | None  # from the reply cache; None when it is not there (see `why_missing`)
    cached_usage: dict | None
    key: str
    why_missing: str = ""


def _escaped(text: str) -> str:
    """`text` literal inside a LIKE pattern with ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Store:
    """Reads for the pages, on one AsyncAgent (one database) for the life of the server."""

    def __init__(self, agent: AsyncAgent):
        self.agent = agent
        self._records: OrderedDict[str, Record] = OrderedDict()  # least recently used first
        self._heads: dict[str, tuple[str, ThreadSummary]] = {}  # thread -> (head id, its row), for filtering
        self.running: set[str] = set()  # threads this server is running now

    # The agent's saver and a graph to read states with: the API's own, so reads match what it shows.
    @property
    def _saver(self):
        return self.agent._core.saver

    def _reader(self):
        return self.agent._core.reader()

    def _config(self, thread: str, checkpoint: str | None = None) -> dict:
        return self.agent._core.config(thread, checkpoint)

    def _kind(self) -> str:
        from savers.catalog import backend

        return backend(self._saver)

    async def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        kind = self._kind()
        if kind == "postgres":
            async with self._saver.conn.connection() as conn:
                rows = await (await conn.execute(sql.replace("?", "%s"), params)).fetchall()
            return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]
        async with self._saver.lock:
            async with self._saver.conn.execute(sql, params) as cur:
                return [tuple(r) for r in await cur.fetchall()]

    # -- threads -----------------------------------------------------------------------------------------

    async def _thread_rows(self) -> list:
        """(thread_id, checkpoints, head) of every thread, newest first, in one query."""
        from savers.catalog import ThreadRow, alist_threads

        if self._kind() == "memory":
            return await alist_threads(self._saver)
        rows = await self._query(
            "SELECT thread_id, COUNT(*), MAX(checkpoint_id) FROM checkpoints WHERE checkpoint_ns = '' "
            "GROUP BY thread_id ORDER BY MAX(checkpoint_id) DESC")
        # leaves=1 stands in until a row is shown: counting branches costs a query per thread (`_shown`).
        return [ThreadRow(r[0], int(r[1]), r[2], 1) for r in rows]

    async def _held(self, threads: list[str]) -> set[str]:
        """Threads a run holds right now, in this process or any other (the API's run locks)."""
        return set(await self.agent._running(threads)) | (self.running & set(threads))

    async def _summary(self, row, held: set[str]) -> ThreadSummary:
        """A thread's row from its head alone (branches are counted only for rows shown: `_shown`)."""
        running = row.thread_id in held
        cached = self._heads.get(row.thread_id)
        if cached and cached[0] == row.head and not running:
            return cached[1]
        snapshot = await self._reader().aget_state(self._config(row.thread_id))
        info: ThreadInfo = self.agent._core.thread_info(row, snapshot, running)
        values = snapshot.values or {}
        fields = {k: v for k, v in info.to_dict().items() if k in ThreadSummary.__dataclass_fields__}
        fields["steps"] = f"{len(values.get('results') or [])}/{len(values.get('plan') or [])}"
        if running:
            fields["status"] = "running"
        summary = ThreadSummary(**fields)
        if not running:
            self._heads[row.thread_id] = (row.head, summary)
        return summary

    async def _shown(self, summary: ThreadSummary) -> ThreadSummary:
        from savers.catalog import alist_threads

        found = await alist_threads(self._saver, summary.thread_id)
        if not found:
            return summary
        return replace(summary, checkpoints=found[0].checkpoints, branches=max(0, found[0].leaves - 1))

    async def threads(self, query: str = "", status: str = "", page: int = 1) -> ThreadPage:
        """A page of threads, newest first. `query` matches the thread id or the question (any case);
        `status` keeps one status. Without either, only the threads on the page are read."""
        query = query.strip()
        rows = await self._thread_rows()
        if not query and not status:
            pages = max(1, -(-len(rows) // PAGE_SIZE))
            page = min(max(page, 1), pages)
            chosen = rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
            held = await self._held([r.thread_id for r in chosen])
            shown = [await self._shown(await self._summary(r, held)) for r in chosen]
            return ThreadPage(shown, len(rows), len(rows), len(rows), page, pages)
        needle = query.lower()
        held = await self._held([r.thread_id for r in rows])
        matches, scanned, deadline = [], 0, time.monotonic() + SCAN_BUDGET_S
        for row in rows:
            id_match = bool(needle) and needle in row.thread_id.lower()
            if id_match and not status:  # no need to read the thread to know it matches
                matches.append(row)
                scanned += 1
                continue
            known = self._heads.get(row.thread_id)
            if not (known and known[0] == row.head) and time.monotonic() > deadline:
                break
            summary = await self._summary(row, held)
            scanned += 1
            if status and summary.status != status:
                continue
            if needle and not id_match and needle not in (summary.question or "").lower():
                continue
            matches.append(row)
        pages = max(1, -(-len(matches) // PAGE_SIZE))
        page = min(max(page, 1), pages)
        shown = [await self._shown(await self._summary(r, held))
                 for r in matches[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]]
        return ThreadPage(shown, len(matches), scanned, len(rows), page, pages)

    async def thread_ids(self, limit: int = 200) -> list[str]:
        return [r.thread_id for r in (await self._thread_rows())[:limit]]

    # -- one thread --------------------------------------------------------------------------------------

    async def record(self, thread: str) -> Record:
        """Every checkpoint of a thread, its usage, model and error; cached while the thread does not change."""
        from savers.catalog import acheckpoint_links

        links = await acheckpoint_links(self._saver, thread)
        if not links:
            await self.agent.result(thread)  # raises ThreadNotFound with the API's own message
        head = max(links)
        cached = self._records.get(thread)
        if (cached and cached.head == head and len(cached.rows) == len(links)
                and time.monotonic() - cached.read_at < RECORD_TTL_S and thread not in self.running):
            self._records.move_to_end(thread)
            return cached
        usage, errors, models = {}, {}, {}

        def note(snapshot) -> None:
            cid = snapshot.config["configurable"]["checkpoint_id"]
            usage[cid] = dict((snapshot.values or {}).get("usage") or {})
            models[cid] = (snapshot.metadata or {}).get("model") or ""
            if error := task_error(snapshot):
                errors[cid] = error

        page = self.agent._core.history_page(thread, links, None, None)
        rows = await self.agent._page_rows(thread, links, page, note)
        record = Record(thread=thread, rows=rows, usage=usage, errors=errors, models=models, head=head,
                        branches_into=await self._branches_into(thread), read_at=time.monotonic())
        self._records[thread] = record
        self._records.move_to_end(thread)
        while len(self._records) > RECORDS_KEPT:
            self._records.popitem(last=False)
        return record

    async def search(self, record: Record, text: str) -> frozenset[str]:
        """The checkpoints of a record whose state holds `text` (any case, in its JSON), read a piece at a
        time; the last few searches of a record are kept with it."""
        needle = text.strip().lower()
        if needle in record.found:
            record.found.move_to_end(needle)
            return record.found[needle]
        found, before = set(), None
        while True:
            piece = [s async for s in self._reader().aget_state_history(self._config(record.thread), before=before,
                                                                          limit=READ_PIECE)]
            found.update(s.config["configurable"]["checkpoint_id"] for s in piece
                         if needle in json.dumps(s.values or {}, ensure_ascii=False, default=str).lower())
            if len(piece) < READ_PIECE:
                break
            before = piece[-1].config
        record.found[needle] = frozenset(found)
        while len(record.found) > SEARCHES_KEPT:
            record.found.popitem(last=False)
        return record.found[needle]

    async def _branches_into(self, thread: str) -> list[tuple[str, str]]:
        """Threads made by `branch` from this one: their first checkpoint records `branch_of: thread@C`."""
        kind = self._kind()
        if kind == "memory":
            return []
        prefix = _escaped(thread) + "@%"
        if kind == "postgres":
            sql = ("SELECT thread_id, metadata->>'branch_of' FROM checkpoints WHERE checkpoint_ns = '' "
                   "AND parent_checkpoint_id IS NULL AND metadata->>'branch_of' LIKE ? ESCAPE '\\'")
        else:
            sql = ("SELECT thread_id, json_extract(CAST(metadata AS TEXT), '$.branch_of') FROM checkpoints "
                   "WHERE checkpoint_ns = '' AND parent_checkpoint_id IS NULL "
                   "AND json_extract(CAST(metadata AS TEXT), '$.branch_of') LIKE ? ESCAPE '\\'")
        rows = await self._query(sql, (prefix,))
        return sorted((r[0], r[1].rpartition("@")[2]) for r in rows if r[0] != thread)

    def forget(self, thread: str) -> None:
        self._records.pop(thread, None)
        self._heads.pop(thread, None)

    async def snapshot(self, thread: str, checkpoint: str):
        return await self._reader().aget_state(self._config(thread, checkpoint))

    async def preview_edit(self, thread: str, checkpoint: str, values: dict[str, Any],
                           as_node: str | None) -> tuple[dict, dict, list[str]]:
        """What `fork` would write, without writing it: the state before, the edited state, and what runs next.

        The edit is applied exactly as `fork` applies it (the API's edit rules, LangGraph's update_state), but
        to a copy of the one checkpoint in a throwaway in-memory saver.
        """
        from langgraph.checkpoint.memory import InMemorySaver

        from agent.offline import OfflineChatModel
        from graphs.cot import build_graph

        view = await self.agent.state(thread, checkpoint)  # resolves a prefix; ThreadNotFound etc. as the API
        snapshot = await self.snapshot(thread, view.checkpoint.checkpoint_id)
        update, node, _ = self.agent._core.edit(snapshot, values, as_node)
        tup = await self._saver.aget_tuple(snapshot.config)
        scratch = InMemorySaver()
        config = {"configurable": {"thread_id": "preview", "checkpoint_ns": ""}}
        stored = scratch.put(config, tup.checkpoint, tup.metadata, dict(tup.checkpoint.get("channel_versions", {})))
        by_task: dict[str, list] = {}
        for task_id, channel, value in tup.pending_writes or []:
            by_task.setdefault(task_id, []).append((channel, value))
        for task_id, writes in by_task.items():
            scratch.put_writes(stored, writes, task_id)
        graph = build_graph(OfflineChatModel(), max_revisions=self.agent.settings.max_revisions).compile(
            checkpointer=scratch)
        edited = graph.get_state(graph.update_state(stored, update, as_node=node))
        nxt = ["input" if n == "__start__" else n for n in edited.next]
        return dict(snapshot.values or {}), dict(edited.values or {}), nxt

    # -- the model call behind a step ---------------------------------------------------------------------

    async def model_call(self, record: Record, row: CheckpointInfo) -> ModelCall | None:
        """The request the node that wrote `row` sent, rebuilt from its parent's state (the node's input) with
        the graph's own request builders, and the reply stored for exactly that request, if any."""
        from graphs import cot

        builders = {"analyze": cot._analyze_request, "execute": cot._execute_request,
                    "validate": cot._validate_request}
        if row.source != "loop" or row.node not in builders or not record.row(row.parent_checkpoint_id or ""):
            return None
        state = dict((await self.snapshot(record.thread, row.parent_checkpoint_id)).values or {})
        try:
            schema, messages = builders[row.node](state)
        except (KeyError, IndexError):
            return None
        spec = record.models.get(row.checkpoint_id) or "offline"
        cache = getattr(self._saver, "response_cache", None)
        first = self.agent.settings.structured_output
        methods = (first, "function_calling" if first == "json_schema" else "json_schema")
        key = ""
        for model_id in await self._model_ids(spec):
            for method in methods:
                key = request_key(model_id, method, schema, messages)
                hit = await cache.aget(key) if cache is not None else None
                if hit:
                    return ModelCall(row.node, schema.__name__, list(messages), hit.get("reply"), hit.get("usage"),
                                     key)
        why = ("this database keeps no reply cache" if cache is None else
               f"no reply is stored for exactly this request of '{spec}' (asked with --fresh after the first "
               "reply, or the cache was cleared)")
        return ModelCall(row.node, schema.__name__, list(messages), None, None, key, why)

    async def _model_ids(self, spec: str) -> list[str]:
        """The names the reply cache may know this model by: as this process would name it, and as the
        processes that ran it did (the name includes the endpoint, which may differ from ours)."""
        from agent.models import model_identity

        try:
            ids = [model_identity(spec)]
        except Exception:  # a spec this version does not know: look it up as recorded
            ids = [spec]
        if self._kind() != "memory":
            prefix = _escaped(spec) + "@%"
            rows = await self._query("SELECT DISTINCT model FROM agent_llm_cache WHERE model = ? OR model LIKE ? "
                                     "ESCAPE '\\'", (spec, prefix))
            ids += [r[0] for r in rows if r[0] not in ids]
        return ids

    # -- export --------------------------------------------------------------------------------------------

    async def export_rows(self, thread: str, upto: str | None = None) -> list[CheckpointInfo]:
        """The rows an export holds: the whole thread, or the lineage ending at `upto` (a full id)."""
        record = await self.record(thread)
        if not upto:
            return record.rows
        lineage, current = [], record.row(upto)
        while current is not None:
            lineage.append(current)
            current = record.row(current.parent_checkpoint_id or "")
        return list(reversed(lineage))

    async def export(self, thread: str, rows: list[CheckpointInfo], upto: str | None = None) -> AsyncIterator[str]:
        """`rows` (export_rows) as `history --json` rows, each with its `show --json` state, in pieces of JSON:
        `{format, thread_id, branch_head, exported_at, checkpoints: [...]}`, indented as json.dumps(indent=2)
        would. One checkpoint's state at a time: each holds the thread's whole state so far, and the document
        of a thread of 2,000 offline steps is 719 MB (built whole, the server grew to 1.5 GB)."""
        from datetime import datetime, timezone

        head = {"format": "agent-history-json/1", "thread_id": thread, "branch_head": upto,
                "exported_at": datetime.now(timezone.utc).isoformat()}
        yield dumps(head, sort_keys=False)[:-2] + ',\n  "checkpoints": ['
        for n, row in enumerate(rows):
            snapshot = await self.snapshot(thread, row.checkpoint_id)
            result = self.agent._core.result(thread, snapshot).to_dict()
            checkpoint = {
                "thread_id": thread, **row.to_dict(),
                **{k: result[k] for k in ("status", "question", "steps", "answer", "validation", "usage", "error")},
                "values": dict(snapshot.values or {}),
            }
            yield ("," if n else "") + "\n    " + dumps(checkpoint, sort_keys=False).replace("\n", "\n    ")
        yield "\n  ]\n}" if rows else "]\n}"

def dumps(value: Any, *, sort_keys: bool = True) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=sort_keys, default=str)
