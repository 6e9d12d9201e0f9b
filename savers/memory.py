"""The `memory://` backend: LangGraph's in-memory saver, for tests and throwaway runs (nothing persists)."""

from functools import cached_property

from langgraph.checkpoint.memory import InMemorySaver

from savers.cache import MemoryCache


class MemorySaver(InMemorySaver):
    """InMemorySaver with an in-memory reply cache, so every backend offers the same additions."""

    @cached_property
    def response_cache(self) -> MemoryCache:
        return MemoryCache()
