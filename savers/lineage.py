"""Copy one lineage of a thread (a checkpoint and all its ancestors, with their pending writes) into a
new thread, through the public saver interface only - so it works on every backend, ours or not."""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def _config(thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    configurable = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _checkpoint_id(config: dict | None) -> str | None:
    return (config or {}).get("configurable", {}).get("checkpoint_id")


def _writes_by_task(pending_writes) -> dict[str, list[tuple[str, Any]]]:
    grouped: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for task_id, channel, value in pending_writes or []:
        grouped[task_id].append((channel, value))
    return grouped


def _history_writes(tup, last: str) -> list:
    """Writes that led from a checkpoint to the next one. The last checkpoint's writes belong to the step
    after it, which is not part of the lineage: the copy stops *before* that step, ready to run it."""
    return [] if tup.checkpoint["id"] == last else list(tup.pending_writes or [])


def _put_args(source: str, target: str, tup, extra_metadata: dict):
    checkpoint = tup.checkpoint
    metadata = {**(tup.metadata or {}), **extra_metadata}
    parent = _checkpoint_id(tup.parent_config)
    # Every channel counts as new, so backends that store values apart (Postgres blobs) copy them all.
    return _config(target, parent), checkpoint, metadata, dict(checkpoint.get("channel_versions", {}))


def copy_lineage(saver, source: str, target: str, checkpoint_id: str, extra_metadata: dict | None = None) -> int:
    """Copy `checkpoint_id` and its ancestors from `source` into `target`; returns how many were copied."""
    chain = []
    config = _config(source, checkpoint_id)
    while config is not None:
        tup = saver.get_tuple(config)
        if tup is None:
            break
        chain.append(tup)
        config = tup.parent_config
    for tup in reversed(chain):
        stored = saver.put(*_put_args(source, target, tup, extra_metadata or {}))
        for task_id, writes in _writes_by_task(_history_writes(tup, checkpoint_id)).items():
            saver.put_writes(stored, writes, task_id)
    return len(chain)


async def acopy_lineage(saver, source: str, target: str, checkpoint_id: str,
                        extra_metadata: dict | None = None) -> int:
    chain = []
    config = _config(source, checkpoint_id)
    while config is not None:
        tup = await saver.aget_tuple(config)
        if tup is None:
            break
        chain.append(tup)
        config = tup.parent_config
    for tup in reversed(chain):
        stored = await saver.aput(*_put_args(source, target, tup, extra_metadata or {}))
        for task_id, writes in _writes_by_task(_history_writes(tup, checkpoint_id)).items():
            await saver.aput_writes(stored, writes, task_id)
    return len(chain)
