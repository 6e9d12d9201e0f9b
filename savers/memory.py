"""The `memory://` backend: LangGraph's in-memory saver, for tests and throwaway runs (nothing persists)."""

from langgraph.checkpoint.memory import InMemorySaver


class MemorySaver(InMemorySaver):
    """InMemorySaver under our name, so every backend is opened and extended the same way."""
