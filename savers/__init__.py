"""Storage for the agent: `open_saver(url)` / `open_async_saver(url)` yield a ready, migrated checkpoint saver.

URL schemes: sqlite:///relative.db, sqlite:////abs/path.db, memory://, postgresql://... (also postgres://).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from savers.errors import StorageError
from savers.options import SaverOptions

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

__all__ = ["StorageError", "SaverOptions", "StorageURL", "parse_url", "open_saver", "open_async_saver", "DEFAULT_URL"]

DEFAULT_URL = "sqlite:///agent.db"
SCHEMES = "sqlite:///path.db, memory://, postgresql://user:password@host:port/dbname"


@dataclass(frozen=True)
class StorageURL:
    """A parsed storage URL: which backend, and where (a file path or a Postgres conninfo)."""

    backend: str  # "sqlite" | "memory" | "postgres"
    target: str

    def __str__(self) -> str:
        return self.target if self.backend == "postgres" else f"{self.backend}:{self.target}"


def parse_url(url: str) -> StorageURL:
    """Validate a storage URL without touching the database."""
    url = (url or "").strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StorageError(f"'{url}' is not a storage URL: use one of {SCHEMES}")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest in ("/", "//"):
            raise StorageError(f"'{url}' has no file path: write sqlite:///relative.db or sqlite:////abs/path.db")
        return StorageURL("sqlite", rest[1:])
    if scheme == "memory":
        return StorageURL("memory", "")
    if scheme in ("postgresql", "postgres"):
        from savers.postgres import check_conninfo

        return StorageURL("postgres", check_conninfo(url))
    raise StorageError(f"unknown storage scheme '{scheme}://': use one of {SCHEMES}")


@contextmanager
def open_saver(url: str, *, create: bool = True, options: SaverOptions | None = None) -> Iterator[BaseCheckpointSaver]:
    """A synchronous saver for `url`, set up and migrated; closed (pool and connections) on exit.

    With `create=False` a SQLite file that does not exist is an error instead of a new, empty database.
    `options`: storage and connection options (savers.options); None reads them from the environment.
    """
    where = parse_url(url)
    options = SaverOptions.from_env() if options is None else options
    if where.backend == "memory":
        from savers.memory import MemorySaver

        yield MemorySaver()
    elif where.backend == "sqlite":
        from savers.sqlite import open_sqlite

        with open_sqlite(where.target, create=create, options=options) as saver:
            yield saver
    else:
        from savers.postgres import open_postgres

        with open_postgres(where.target, options=options) as saver:
            yield saver


@asynccontextmanager
async def open_async_saver(url: str, *, create: bool = True,
                           options: SaverOptions | None = None) -> AsyncIterator[BaseCheckpointSaver]:
    """The asynchronous twin of `open_saver`."""
    where = parse_url(url)
    options = SaverOptions.from_env() if options is None else options
    if where.backend == "memory":
        from savers.memory import MemorySaver

        yield MemorySaver()
    elif where.backend == "sqlite":
        from savers.sqlite import open_async_sqlite

        async with open_async_sqlite(where.target, create=create, options=options) as saver:
            yield saver
    else:
        from savers.postgres import open_async_postgres

        async with open_async_postgres(where.target, options=options) as saver:
            yield saver
