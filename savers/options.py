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
    # Postgres: server-side prepared statements after this many executions of a statement (0: at once);
    # None disables them, as transaction-mode poolers (pgbouncer) need.
    prepare_threshold: int | None = 0
    pool_size: int = 10

    def __post_init__(self) -> None:
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise StorageError(f"unknown compression {self.compression!r}: use {', '.join(COMPRESSIONS)} or none")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> SaverOptions:
        """AGENT_COMPRESSION (zstd, gzip, none) and AGENT_ENCRYPTION_KEY; `overrides` win.

        An AGENT_ENCRYPTION_KEY that is set but empty is an error, not "no encryption": an unset secret in a
        deployment script must not silently store plaintext."""
        env = os.environ if environ is None else environ
        values: dict = {"compression": parse_compression(env.get(ENV_COMPRESSION, ""), ENV_COMPRESSION),
                        "encryption_key": env.get(ENV_KEY)}
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
