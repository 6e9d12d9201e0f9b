"""agent: a chain-of-thought reasoning agent whose every step is a checkpoint in a real database.

`from agent import Agent, AsyncAgent`; the heavy imports (LangGraph, LangChain) happen on first use.
"""

from agent.errors import (
    AgentError,
    BadInput,
    CheckpointNotFound,
    ConfigError,
    ModelError,
    NotOpen,
    QuestionMismatch,
    StorageError,
    ThreadBusy,
    ThreadExists,
    ThreadNotFound,
)

__all__ = [
    "Agent", "AsyncAgent", "RunResult", "Step", "Usage", "Event", "StateView", "CheckpointInfo", "HistoryPage", "ThreadInfo", "Diff", "Change", "Settings", "load_settings",
    "RetentionPolicy", "PruneReport", "TransferReport",
    "AgentError", "BadInput", "CheckpointNotFound", "ThreadExists", "ThreadBusy", "ConfigError", "ModelError", "NotOpen", "QuestionMismatch", "StorageError", "ThreadNotFound",
]

_LAZY = {
    "Agent": "agent.api", "AsyncAgent": "agent.api", "RunResult": "agent.api", "Step": "agent.api",
    "Usage": "agent.api", "Event": "agent.api", "StateView": "agent.api",
    "CheckpointInfo": "agent.history", "HistoryPage": "agent.history", "ThreadInfo": "agent.history", "Diff": "agent.history", "Change": "agent.history", "Settings": "agent.config", "load_settings": "agent.config",
    "RetentionPolicy": "agent.lifecycle", "PruneReport": "agent.lifecycle", "TransferReport": "agent.lifecycle",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agent' has no attribute '{name}'")
