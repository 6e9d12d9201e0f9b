"""The exceptions users of `agent` catch: one base class, one subclass per thing that can be wrong.

Each carries the CLI exit code it maps to, and a message that says what to do next.
"""


class AgentError(Exception):
    """Base of every error `agent` raises on purpose. Exit code 2: bad input or usage."""

    exit_code = 2


class ConfigError(AgentError):
    """A setting (flag, AGENT_* variable, agent.toml or [tool.agent]) is invalid."""


class StorageError(AgentError):
    """The database cannot be opened, reached or used."""


class ModelError(AgentError):
    """The model spec is unknown, or the model cannot be used (e.g. no API key)."""


class BadInput(AgentError):
    """A question, thread id or other argument is unusable as given."""


class ThreadNotFound(AgentError):
    """No thread with that id exists in the database."""


class QuestionMismatch(AgentError):
    """A thread already holds a different question."""


class CheckpointNotFound(AgentError):
    """No checkpoint of the thread matches the id or prefix, or the prefix matches several."""


class ThreadExists(AgentError):
    """A new thread (e.g. a branch) was asked for under a name that is taken."""


class NotOpen(AgentError):
    """An Agent used outside its `with` block: before it was entered, or after it was closed."""


class ThreadBusy(AgentError):
    """Another process or task is running the thread right now. Exit code 3."""

    exit_code = 3
