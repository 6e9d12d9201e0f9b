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


SQLITE_HEADER = b"SQLite format 3\x00"


def refuse_overwriting(path, database: str | None = None) -> None:
    """An output file (export, batch results) that is a directory, or a SQLite database or one of its
    -wal/-shm/-journal files - the open database itself, typed for the output by mistake - is refused:
    the export would replace it, the results be appended into it. `database`: the SQLite file the command
    opens, which may not exist yet (a first `batch` makes it)."""
    import os
    import stat
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise BadInput(f"cannot write {path}: it is a directory")
    base = path
    for suffix in ("-wal", "-shm", "-journal"):
        if path.name.endswith(suffix):
            base = path.with_name(path.name[:-len(suffix)])
    what = "a SQLite database" if base == path else f"a file of the SQLite database {base}"
    refusal = BadInput(f"{path} is {what}: writing there would destroy it (choose another file)")
    if database is not None and os.path.abspath(base) == os.path.abspath(database):
        raise refusal
    try:
        if not stat.S_ISREG(os.stat(base).st_mode):  # a pipe, a device: nothing to read a header from
            return
        with open(base, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError:
        return
    if header == SQLITE_HEADER:
        raise refusal

