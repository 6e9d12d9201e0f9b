"""Errors raised by the storage layer, each with a message that says what to do next."""


class StorageError(Exception):
    """The database named by a URL cannot be opened, reached or used."""


class ThreadBusy(StorageError):
    """Another process or task is running the thread right now."""


class WriterConflict(StorageError):
    """Two writers continued one thread from the same checkpoint: the second is refused (one writer per thread)."""


class ThreadDeleted(StorageError):
    """A write arrived for a thread after it was deleted (a late write of a cancelled run): it is refused."""
