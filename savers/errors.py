"""Errors raised by the storage layer, each with a message that says what to do next."""


class StorageError(Exception):
    """The database named by a URL cannot be opened, reached or used."""


class ThreadBusy(StorageError):
    """Another process or task is running the thread right now."""
