"""agent: a chain-of-thought reasoning agent whose every step is a checkpoint in a real database.

`from agent import Agent, AsyncAgent`; the heavy imports (LangGraph, LangChain) happen on first use.
"""

from agent.errors import (
    AgentError,
    BadInput,
    ConfigError,
    ModelError,
    QuestionMismatch,
    StorageError,
    ThreadNotFound,
)

__all__ = [
    "Agent", "AsyncAgent", "RunResult", "Step", "Usage", "Event", "Settings", "load_settings",
    "AgentError", "BadInput", "ConfigError", "ModelError", "QuestionMismatch", "StorageError", "ThreadNotFound",
]

_LAZY = {
    "Agent": "agent.api", "AsyncAgent": "agent.api", "RunResult": "agent.api", "Step": "agent.api",
    "Usage": "agent.api", "Event": "agent.api", "Settings": "agent.config", "load_settings": "agent.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agent' has no attribute '{name}'")
