"""Backpressure for durability="async": a run keeps at most K checkpoints made but not yet saved, so a slow
database slows the run down instead of letting unsaved checkpoints pile up in memory without limit.

Stock LangGraph (1.2) submits each checkpoint's save to a background executor chained after the previous
one and goes on at once; nothing bounds the chain (langchain-ai/langgraph#7094). The loop makes checkpoints
only between the chunks it streams, so the reader of the stream is the one place that can hold it back:
`stream` / `astream` wait at each checkpoint LangGraph announces ("checkpoints" stream mode) until fewer
than K are unsaved, and `BoundedSaver`, the graph's checkpointer, reports each save as it completes.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions, Checkpoint, CheckpointMetadata

# The run's PendingCheckpoints travels to the saver in the config; LangGraph keeps "__" keys out of the
# checkpoint's metadata.
CONFIG_KEY = "__agent_pending_checkpoints"
DURABILITIES = ("sync", "async")


class PendingCheckpoints:
    """One run's checkpoints made but not yet saved, oldest first. LangGraph saves them in the order it
    makes them, so a checkpoint saved means every one made before it is saved too."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"at most {limit} pending checkpoints would never let a run start: use 1 or more")
        self.limit = limit
        self.most = 0  # the most unsaved at once, as this run counted them
        self._unsaved: deque[str] = deque()
        self._saved_unseen: set[str] = set()  # saved (or loaded) before the stream announced them
        self._stopped = False
        self._changed = threading.Condition()
        self._async_waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def made(self, checkpoint_id: str) -> None:
        """The loop made (and submitted for saving) this checkpoint, or started from it."""
        with self._changed:
            if checkpoint_id in self._saved_unseen:
                self._saved_unseen.discard(checkpoint_id)
                self._unsaved.clear()
            else:
                self._unsaved.append(checkpoint_id)
                self.most = max(self.most, len(self._unsaved))

    def saved(self, checkpoint_id: str) -> None:
        """The database has this checkpoint (and, saves being in order, every one made before it)."""
        with self._changed:
            if checkpoint_id in self._unsaved:
                while self._unsaved.popleft() != checkpoint_id:
                    pass
            else:
                self._saved_unseen.add(checkpoint_id)
            self._notify()

    def stop(self) -> None:
        """A save failed: LangGraph starts none after it, so waiting for room would wait forever. The run
        goes on unbounded to its end, where LangGraph raises the failure."""
        with self._changed:
            self._stopped = True
            self._notify()

    def _notify(self) -> None:
        self._changed.notify_all()
        if self._async_waiter is not None:
            loop, event = self._async_waiter
            loop.call_soon_threadsafe(event.set)

    def _full(self) -> bool:
        return not self._stopped and len(self._unsaved) >= self.limit

    def wait(self) -> None:
        """Block until fewer than `limit` checkpoints are unsaved, so the next one makes at most `limit`."""
        with self._changed:
            while self._full():
                self._changed.wait()

    async def await_room(self) -> None:
        """`wait` for a run on an event loop: the saves it waits for run on the same loop."""
        while True:
            with self._changed:
                if not self._full():
                    return
                if self._async_waiter is None:
                    self._async_waiter = (asyncio.get_running_loop(), asyncio.Event())
                event = self._async_waiter[1]
                event.clear()
            await event.wait()


def _pending(config: RunnableConfig) -> PendingCheckpoints | None:
    return (config.get("configurable") or {}).get(CONFIG_KEY)


class BoundedSaver(BaseCheckpointSaver):
    """A saver that tells a run's PendingCheckpoints when each of its checkpoints is saved (and which one it
    started from); everything else goes straight to `saver`. Without a PendingCheckpoints in the config
    (a run made by `graph.stream` directly, reads, `update_state`) it is just `saver`."""

    def __init__(self, saver: BaseCheckpointSaver) -> None:
        # BaseCheckpointSaver.__init__ would give this wrapper a serializer of its own; it uses saver's.
        self.saver = saver

    @property
    def serde(self):
        return self.saver.serde

    @property
    def config_specs(self) -> list:
        return self.saver.config_specs

    def __getattr__(self, name: str) -> Any:  # our savers' additions: response_cache, conn, pool ...
        if name == "saver":
            raise AttributeError(name)
        return getattr(self.saver, name)

    def with_allowlist(self, extra_allowlist) -> BoundedSaver:
        inner = self.saver.with_allowlist(extra_allowlist)
        return self if inner is self.saver else BoundedSaver(inner)

    # -- what a run does through this saver --------------------------------------------------------------

    @staticmethod
    def _loaded(config: RunnableConfig, found) -> None:
        pending = _pending(config)
        if pending is not None and found is not None and not config["configurable"].get("checkpoint_ns"):
            pending.saved(found.checkpoint["id"])  # a run that starts from it announces it, but never saves it

    def get_tuple(self, config: RunnableConfig):
        found = self.saver.get_tuple(config)
        self._loaded(config, found)
        return found

    async def aget_tuple(self, config: RunnableConfig):
        found = await self.saver.aget_tuple(config)
        self._loaded(config, found)
        return found

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        pending = _pending(config)
        try:
            saved = self.saver.put(config, checkpoint, metadata, new_versions)
        except BaseException:
            if pending is not None:
                pending.stop()
            raise
        if pending is not None and not config["configurable"].get("checkpoint_ns"):
            pending.saved(checkpoint["id"])
        return saved

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        pending = _pending(config)
        try:
            saved = await self.saver.aput(config, checkpoint, metadata, new_versions)
        except BaseException:
            if pending is not None:
                pending.stop()
            raise
        if pending is not None and not config["configurable"].get("checkpoint_ns"):
            pending.saved(checkpoint["id"])
        return saved

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        return self.saver.put_writes(config, writes, task_id, task_path)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        return await self.saver.aput_writes(config, writes, task_id, task_path)

    # -- the rest of the contract, unchanged -------------------------------------------------------------

    def get(self, config):
        return self.saver.get(config)

    def list(self, config, **kwargs):
        return self.saver.list(config, **kwargs)

    def delete_thread(self, thread_id):
        return self.saver.delete_thread(thread_id)

    def delete_for_runs(self, run_ids):
        return self.saver.delete_for_runs(run_ids)

    def copy_thread(self, source_thread_id, target_thread_id, **kwargs):
        return self.saver.copy_thread(source_thread_id, target_thread_id, **kwargs)

    def prune(self, thread_ids, **kwargs):
        return self.saver.prune(thread_ids, **kwargs)

    def get_delta_channel_history(self, **kwargs):
        return self.saver.get_delta_channel_history(**kwargs)

    def get_next_version(self, current, channel):
        return self.saver.get_next_version(current, channel)

    async def aget(self, config):
        return await self.saver.aget(config)

    def alist(self, config, **kwargs):
        return self.saver.alist(config, **kwargs)

    async def adelete_thread(self, thread_id):
        return await self.saver.adelete_thread(thread_id)

    async def adelete_for_runs(self, run_ids):
        return await self.saver.adelete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id, target_thread_id, **kwargs):
        return await self.saver.acopy_thread(source_thread_id, target_thread_id, **kwargs)

    async def aprune(self, thread_ids, **kwargs):
        return await self.saver.aprune(thread_ids, **kwargs)

    async def aget_delta_channel_history(self, **kwargs):
        return await self.saver.aget_delta_channel_history(**kwargs)


def _bounded_config(config: RunnableConfig, pending: PendingCheckpoints) -> RunnableConfig:
    return {**config, "configurable": {**(config.get("configurable") or {}), CONFIG_KEY: pending}}


def _check(graph, durability: str) -> None:
    if durability not in DURABILITIES:
        raise ValueError(f"durability {durability!r}: use one of {', '.join(DURABILITIES)}")
    if durability == "async" and not isinstance(graph.checkpointer, BoundedSaver):
        raise TypeError("durability='async' with a bound needs the graph compiled with a BoundedSaver")


def stream(graph, graph_input: Any, config: RunnableConfig, *, stream_mode: list[str], durability: str = "sync",
           max_pending: int = 2, pending: PendingCheckpoints | None = None) -> Iterator[tuple[str, Any]]:
    """`graph.stream(..., stream_mode=[...])`, yielding (mode, chunk) as LangGraph does. With durability
    "async", at most `max_pending` checkpoints of the run are unsaved at any time (`pending` to watch them)."""
    _check(graph, durability)
    if durability == "sync":
        yield from graph.stream(graph_input, config, stream_mode=stream_mode, durability="sync")
        return
    pending = pending or PendingCheckpoints(max_pending)
    modes = list(dict.fromkeys([*stream_mode, "checkpoints"]))
    for mode, chunk in graph.stream(graph_input, _bounded_config(config, pending), stream_mode=modes,
                                    durability="async"):
        if mode == "checkpoints":
            pending.made(chunk["config"]["configurable"]["checkpoint_id"])
            pending.wait()  # the loop makes its next checkpoint only after this chunk is taken
            if "checkpoints" not in stream_mode:
                continue
        yield mode, chunk


async def astream(graph, graph_input: Any, config: RunnableConfig, *, stream_mode: list[str],
                  durability: str = "sync", max_pending: int = 2,
                  pending: PendingCheckpoints | None = None) -> AsyncIterator[tuple[str, Any]]:
    """The asynchronous twin of `stream`."""
    _check(graph, durability)
    if durability == "sync":
        async for item in graph.astream(graph_input, config, stream_mode=stream_mode, durability="sync"):
            yield item
        return
    pending = pending or PendingCheckpoints(max_pending)
    modes = list(dict.fromkeys([*stream_mode, "checkpoints"]))
    async for mode, chunk in graph.astream(graph_input, _bounded_config(config, pending), stream_mode=modes,
                                           durability="async"):
        if mode == "checkpoints":
            pending.made(chunk["config"]["configurable"]["checkpoint_id"])
            await pending.await_room()
            if "checkpoints" not in stream_mode:
                continue
        yield mode, chunk
