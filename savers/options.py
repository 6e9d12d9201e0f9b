"""How a saver is opened beyond its URL: storage options (compression, encryption at rest) and Postgres
connection options (prepared statements, pool). `open_saver(url, options=...)`; without options, from the
environment (SaverOptions.from_env), so every entry point - CLI, API, UI, bench - opens a database alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from savers.errors import StorageError

ENV_COMPRESSION, ENV_KEY = "AGENT_COMPRESSION", "AGENT_ENCRYPTION_KEY"
ENV_PREPARE_THRESHOLD, ENV_POOL_SIZE = "AGENT_PG_PREPARE_THRESHOLD", "AGENT_PG_POOL_SIZE"
COMPRESSIONS = ("zstd", "gzip")


@dataclass(frozen=True)
class SaverOptions:
    """`compression`: "zstd", "gzip" or None - new values are compressed; values stored under any setting
    stay readable under any other. `encryption_key`: a passphrase (>= 16 characters) or None. A database
    remembers whether it is encrypted (a keyring row, created with its first encrypted write): opening an
    encrypted one without the key, or with another, is an error; so is opening a plaintext database that
    holds threads with a key (copy it with `migrate` instead) - unless `plaintext_ok`, which opens such a
    database without encryption (the source of a migration that encrypts)."""

    compression: str | None = None
    encryption_key: str | None = field(default=None, repr=False)
    plaintext_ok: bool = False
    # Postgres: server-side prepared statements after this many executions of a statement (0: at once; the
    # sync saver's put and put_writes INSERTs, savers.pgexec, at once whatever the number); None disables
    # them, as transaction-mode poolers (pgbouncer) need.
    prepare_threshold: int | None = 0
    # Postgres: at most this many connections in the saver's pool (its own statements, the reply cache, locks).
    pool_size: int = 10

    def __post_init__(self) -> None:
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise StorageError(f"unknown compression {self.compression!r}: use {', '.join(COMPRESSIONS)} or none")
        parse_prepare_threshold(self.prepare_threshold)
        parse_pool_size(self.pool_size)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> SaverOptions:
        """AGENT_COMPRESSION (zstd, gzip, none), AGENT_ENCRYPTION_KEY, AGENT_PG_PREPARE_THRESHOLD (a number
        or none) and AGENT_PG_POOL_SIZE; `overrides` win.

        An AGENT_ENCRYPTION_KEY that is set but empty is an error, not "no encryption": an unset secret in a
        deployment script must not silently store plaintext."""
        env = os.environ if environ is None else environ
        values: dict = {"compression": parse_compression(env.get(ENV_COMPRESSION, ""), ENV_COMPRESSION),
                        "encryption_key": env.get(ENV_KEY)}
        if env.get(ENV_PREPARE_THRESHOLD):
            values["prepare_threshold"] = parse_prepare_threshold(env[ENV_PREPARE_THRESHOLD], ENV_PREPARE_THRESHOLD)
        if env.get(ENV_POOL_SIZE):
            values["pool_size"] = parse_pool_size(env[ENV_POOL_SIZE], ENV_POOL_SIZE)
        values.update(overrides)
        return cls(**values)


def parse_compression(value: str | None, source: str = "compression") -> str | None:
    """'zstd' / 'gzip' / None from what a user wrote ('', 'none' and None mean none)."""
    text = (value or "").strip().lower()
    if text in ("", "none"):
        return None
    if text not in COMPRESSIONS:
        raise StorageError(f"{source}={value!r} is not a compression: use {', '.join(COMPRESSIONS)} or none")
    return text


def parse_prepare_threshold(value: int | str | None, source: str = "prepare_threshold") -> int | None:
    """An int >= 0 or None from what a user wrote ('none' and None mean no server-side prepared statements)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    try:
        number = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise StorageError(f"{source}={value!r} is not a prepare threshold: use a whole number >= 0, or none "
                           "(no server-side prepared statements, for pgbouncer in transaction mode)")
    return number


def parse_pool_size(value: int | str, source: str = "pool_size") -> int:
    """A pool size (2 to 1000) from what a user wrote: the saver keeps one connection for its own statements
    (two from 3 up: put_writes gets its own, savers/postgres.py _lanes), and the reply cache and the thread
    locks need at least one more."""
    try:
        number = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, int) or not 2 <= number <= 1000:
        raise StorageError(f"{source}={value!r} is not a pool size: use a whole number from 2 to 1000")
    return number
