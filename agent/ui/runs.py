"""Runs started from the page (replay, fork, resume): each is an asyncio task whose progress events are kept
and streamed to any number of listeners as server-sent events, late listeners getting what they missed."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.errors import AgentError
from agent.history import counted

# A finished run's events stay this many runs, so a page that reconnects late still gets the end.
KEEP_FINISHED = 100


@dataclass
class Run:
    id: str
    thread: str
    what: str  # "replay from 1f1e…", "fork at 1f1e…", "resume"
    events: list[dict] = field(default_factory=list)
    done: bool = False
    _bump: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, kind: str, data: dict[str, Any]) -> None:
        """Called on the event loop's thread (the API calls on_event from the run's own task)."""
        self.events.append({**data, "kind": kind})
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self._bump.set()
        self._bump = asyncio.Event()

    async def follow(self) -> AsyncIterator[dict]:
        """Every event so far, then each new one as it comes, until the run ends."""
        seen = 0
        while True:
            if seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            elif self.done:
                return
            else:
                await self._bump.wait()


def describe(event) -> dict[str, Any]:
    """An API progress Event as a plain dict with a line of text a person reads."""
    data = {k: v for k, v in asdict(event).items() if v not in (None, "", [], 0, 0.0) and k != "kind"}
    data["event"] = event.kind
    if event.kind == "resume":
        text = (f"continuing from checkpoint {event.result[:13]}: "
                f"{event.number} of {counted(len(event.steps), 'step')} done")
    elif event.kind == "plan":
        text = ("plan" if not event.revision else f"plan (revision {event.revision})") + ": " + \
            ("; ".join(f"{n}. {s}" for n, s in enumerate(event.steps, 1)) or "no steps")
    elif event.kind == "step":
        text = f"step {event.number} {event.description} → {event.result}"
    elif event.kind == "validation":
        text = ("✓ ok " if event.ok else "✗ rejected ") + event.reason
    else:  # retries and anything newer: say what the API says
        text = getattr(event, "error", "") or event.kind
    data["text"] = text
    return data


class Runs:
    """The runs of this server, by id."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()

    def get(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def start(self, thread: str, what: str, work: Callable[[Callable], Awaitable[Any]],
              on_end: Callable[[], None]) -> Run:
        """Start `work(on_event)` as a task; its RunResult (or error) is the run's last event."""
        run = Run(str(next(self._ids)), thread, what)
        self._runs[run.id] = run
        loop = asyncio.get_running_loop()

        def on_event(event) -> None:
            run.add("progress", describe(event))

        async def main() -> None:
            try:
                result = await work(on_event)
                run.add("done", {"result": result.to_dict() if hasattr(result, "to_dict") else result})
            except AgentError as exc:
                run.add("error", {"text": str(exc)})
            except Exception as exc:  # a fault of ours or the database's: still shown, never a dead page
                run.add("error", {"text": f"unexpected {type(exc).__name__}: {exc}"})
            finally:
                run.finish()
                on_end()
                self._trim()

        task = loop.create_task(main())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    def _trim(self) -> None:
        finished = [r for r in self._runs.values() if r.done]
        for run in finished[:-KEEP_FINISHED]:
            self._runs.pop(run.id, None)

    async def wait_all(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def sse(event: dict) -> str:
    """One server-sent event; its name is the event's kind (progress, done, error)."""
    return f"event: {event['kind']}\ndata: {json.dumps(event, ensure_ascii=False, default=str)}\n\n"
