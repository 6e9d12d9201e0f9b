"""Thread-level operations our savers add to the official ones - copy a thread or one lineage of it, delete
the checkpoints of runs, prune old checkpoints - and the rules every backend applies to them the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from savers.errors import StorageError, ThreadDeleted, WriterConflict

PRUNE_STRATEGIES = ("keep_latest", "delete")


class ThreadExists(StorageError):
    """copy_thread was asked to copy into a thread that already has checkpoints."""


class CheckpointNotFound(StorageError):
    """copy_thread was asked for the lineage of a checkpoint the source thread does not have."""


def text_thread(config):
    """A read's config with its thread id as text, as put stores it (str(thread_id)): so a thread put under an
    int or a UUID is read back under it too (Postgres compared the int to text and failed: a graph invoked
    with thread_id=5 could not start; SQLite could not bind a UUID)."""
    configurable = (config or {}).get("configurable") or {}
    thread_id = configurable.get("thread_id")
    if thread_id is None or type(thread_id) is str:
        return config
    return {**config, "configurable": {**configurable, "thread_id": str(thread_id)}}


def prune_args(thread_ids: Sequence[str], strategy: str) -> list[str]:
    """The thread ids to prune, after the same checks as the official Postgres saver."""
    if isinstance(thread_ids, str):
        raise TypeError("thread_ids must be a sequence of thread IDs, not a str")
    if strategy not in PRUNE_STRATEGIES:
        raise ValueError(f"Unknown prune strategy: {strategy!r} (use one of {', '.join(PRUNE_STRATEGIES)})")
    return [str(t) for t in thread_ids]


def refuse_delta_threads(thread_ids: Sequence[str]) -> None:
    """keep_latest would cut a DeltaChannel off the older checkpoints its value is rebuilt from."""
    if thread_ids:
        raise NotImplementedError(
            f"keep_latest can't prune threads that use a DeltaChannel: {', '.join(sorted(thread_ids))}"
        )


def target_exists(target: str) -> ThreadExists:
    return ThreadExists(f"thread '{target}' already has checkpoints: copy into a new thread id")


def no_checkpoint(source: str, checkpoint_id: str) -> CheckpointNotFound:
    return CheckpointNotFound(f"thread '{source}' has no checkpoint {checkpoint_id}")


def writer_conflict(thread_id: str, parent_id: str | None) -> WriterConflict:
    where = f"checkpoint {parent_id}" if parent_id else "its start"
    return WriterConflict(f"thread '{thread_id}': another writer already went on from {where}, so this run "
                          "stopped instead of forking the thread (one writer per thread); see `history`, and "
                          "`resume` from the head if the other run is gone")


def thread_deleted(thread_id: str) -> ThreadDeleted:
    return ThreadDeleted(f"thread '{thread_id}' was deleted while this run wrote to it; the write is refused "
                         "(delete is final - a new run on the thread id starts afresh)")


def revive(saver, thread_id: str) -> None:
    """Before writing a thread on purpose with its old checkpoint ids (import, branch, migrate, a restore):
    forget that a thread of that id was deleted, so its writes are not refused as late ones."""
    if (method := getattr(saver, "revive", None)) is not None:
        method(thread_id)


async def arevive(saver, thread_id: str) -> None:
    if (method := getattr(saver, "arevive", None)) is not None:
        await method(thread_id)


class SyncWrappers:
    """The synchronous twins of an async saver's copy_thread / delete_for_runs / prune, as the official async
    savers offer for their other methods: run on the saver's event loop, from another thread only."""

    def copy_thread(self, source_thread_id: str, target_thread_id: str, *, up_to: str | None = None,
                    metadata: dict | None = None) -> None:
        self._from_thread(self.acopy_thread(source_thread_id, target_thread_id, up_to=up_to, metadata=metadata))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._from_thread(self.adelete_for_runs(run_ids))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._from_thread(self.aprune(thread_ids, strategy=strategy))

    def revive(self, thread_id: str) -> None:
        self._from_thread(self.arevive(thread_id))

    def _from_thread(self, coro):
        try:
            if asyncio.get_running_loop() is self.loop:
                coro.close()
                raise asyncio.InvalidStateError(
                    f"Synchronous calls to {type(self).__name__} are only allowed from a different thread; await "
                    "the async method (acopy_thread, adelete_for_runs, aprune) instead.")
        except RuntimeError:
            pass
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
