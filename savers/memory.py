"""The `memory://` backend: LangGraph's in-memory saver, for tests and throwaway runs (nothing persists)."""

from collections.abc import Sequence
from functools import cached_property

from langgraph.checkpoint.memory import InMemorySaver

from savers.cache import MemoryCache
from savers.threads import no_checkpoint, prune_args, refuse_delta_threads, target_exists


class MemorySaver(InMemorySaver):
    """InMemorySaver with an in-memory reply cache and every capability of LangGraph's saver interface
    (copy_thread, delete_for_runs, prune), so every backend offers the same additions."""

    @cached_property
    def response_cache(self) -> MemoryCache:
        return MemoryCache()

    # storage[thread][ns][checkpoint id] = (checkpoint, metadata, parent id), serialized;
    # writes[(thread, ns, checkpoint id)][(task id, idx)]; blobs[(thread, ns, channel, version)].

    def _metadata(self, entry) -> dict:
        return self.serde.loads_typed(entry[1])

    def copy_thread(self, source_thread_id: str, target_thread_id: str, *, up_to: str | None = None,
                    metadata: dict | None = None) -> None:
        """Copy a thread, or with `up_to` one lineage of it: that checkpoint, its ancestors, their pending
        writes (except the writes of `up_to` itself, which belong to the step after it), the subgraph
        checkpoints under them, and the values they store. Checkpoint ids stay the same; `metadata` is
        added to every copied checkpoint's (e.g. branch_of)."""
        source, target = str(source_thread_id), str(target_thread_id)
        if any(self.storage.get(target, {}).values()):
            raise target_exists(target)
        namespaces = self.storage.get(source, {})
        if up_to is None:
            copied = {ns: dict(entries) for ns, entries in namespaces.items()}
            skip_writes = None
        else:
            root = namespaces.get("", {})
            if up_to not in root:
                raise no_checkpoint(source, up_to)
            lineage, cursor = [], up_to
            while cursor is not None and cursor in root and cursor not in lineage:
                lineage.append(cursor)
                cursor = root[cursor][2]
            sub = set(lineage) - {up_to}
            copied = {"": {cid: root[cid] for cid in lineage}}
            for ns, entries in namespaces.items():
                if ns:
                    kept = {cid: e for cid, e in entries.items()
                            if (self._metadata(e).get("parents") or {}).get("") in sub}
                    if kept:
                        copied[ns] = kept
            skip_writes = ("", up_to)
        for ns, entries in copied.items():
            if metadata:
                entries = {cid: (e[0], self.serde.dumps_typed({**self._metadata(e), **metadata}), *e[2:])
                           for cid, e in entries.items()}
            self.storage[target][ns].update(entries)
            for cid in entries:
                if (ns, cid) != skip_writes and (source, ns, cid) in self.writes:
                    self.writes[(target, ns, cid)] = dict(self.writes[(source, ns, cid)])
        for (thread, ns, channel, version), value in list(self.blobs.items()):
            if thread == source:
                self.blobs[(target, ns, channel, version)] = value

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) made by these runs; stored values stay."""
        runs = {str(r) for r in run_ids}
        if not runs:
            return
        for thread_id, namespaces in self.storage.items():
            for ns, entries in namespaces.items():
                for cid in [cid for cid, e in entries.items() if self._metadata(e).get("run_id") in runs]:
                    del entries[cid]
                    self.writes.pop((thread_id, ns, cid), None)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """"delete" removes the threads; "keep_latest" keeps each namespace's latest checkpoint (with its
        pending writes and values, and no parent) and deletes the rest."""
        thread_ids = prune_args(thread_ids, strategy)
        if strategy == "delete":
            for thread_id in thread_ids:
                self.delete_thread(thread_id)
            return
        refuse_delta_threads([t for t in thread_ids if any(
            "counters_since_delta_snapshot" in self._metadata(e)
            for entries in self.storage.get(t, {}).values() for e in entries.values())])
        for thread_id in thread_ids:
            referenced = set()
            for ns, entries in self.storage.get(thread_id, {}).items():
                if not entries:
                    continue
                latest = max(entries)
                checkpoint, metadata, _ = entries[latest]
                for cid in [cid for cid in entries if cid != latest]:
                    del entries[cid]
                    self.writes.pop((thread_id, ns, cid), None)
                entries[latest] = (checkpoint, metadata, None)
                versions = self.serde.loads_typed(checkpoint).get("channel_versions", {})
                referenced |= {(thread_id, ns, channel, version) for channel, version in versions.items()}
            for key in [k for k in self.blobs if k[0] == thread_id and k not in referenced]:
                del self.blobs[key]

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str, *, up_to: str | None = None,
                           metadata: dict | None = None) -> None:
        self.copy_thread(source_thread_id, target_thread_id, up_to=up_to, metadata=metadata)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.delete_for_runs(run_ids)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.prune(thread_ids, strategy=strategy)
