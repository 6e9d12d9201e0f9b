"""Whether a database is encrypted, with which salt, and whether a key is the right one: the serializer a saver
is built with, decided from the database itself (table agent_keyring) and the SaverOptions.

The rules, in order: a database with a keyring is encrypted - no key is an error, a wrong key is an error at
open (not garbage at the first read). A key and no keyring: an empty database gets one (a fresh random salt,
so one passphrase gives a different key in every database); a database that already holds threads or replies
is refused - its plaintext rows would be refused one by one later - unless `plaintext_ok` (a migration's
source), when it opens without encryption. No key and no keyring: plaintext, as always.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

from savers.options import ENV_KEY, SaverOptions
from savers.serde import Cipher, EncryptionError, Serializer

SALT_BYTES = 16
PROOF_TYPE, PROOF = "agent.keyring", b"agent keyring v1"
SELECT = "SELECT salt, proof FROM agent_keyring WHERE id = 1"
HAS_DATA = "SELECT 1 WHERE EXISTS (SELECT 1 FROM checkpoints) OR EXISTS (SELECT 1 FROM agent_llm_cache)"
INSERT = "INSERT INTO agent_keyring (id, salt, proof) VALUES (1, {p}, {p}) ON CONFLICT (id) DO NOTHING"

# A plan yields (sql, params) and is sent each statement's rows (tuples or dict rows); it returns the serde.
Plan = Generator[tuple[str, tuple], list, Serializer]


def _row(row: Any) -> tuple[bytes, bytes]:
    return (bytes(row["salt"]), bytes(row["proof"])) if isinstance(row, dict) else (bytes(row[0]), bytes(row[1]))


def serde_plan(options: SaverOptions, where: str, placeholder: str = "?") -> Plan:
    """The serializer for the database at `where` (named in errors), reading and maybe writing its keyring."""
    rows = yield SELECT, ()
    key = options.encryption_key
    if key is None:
        if rows:
            raise EncryptionError(f"{where} is encrypted and {ENV_KEY} is not set: set it to the passphrase the "
                                  "database was written with")
        return Serializer(compression=options.compression)
    if not rows:
        if (yield HAS_DATA, ()):
            if options.plaintext_ok:
                return Serializer(compression=options.compression)
            raise EncryptionError(
                f"{where} was written without encryption, but {ENV_KEY} is set: open it without the key, or copy "
                f"it into an encrypted database with `agent migrate --from <this> --to <new>` (the key set)")
        salt = os.urandom(SALT_BYTES)
        proof = Cipher(key, salt).encrypt(PROOF_TYPE, PROOF)
        yield INSERT.format(p=placeholder), (salt, proof)
        rows = yield SELECT, ()  # another process may have won the race: its salt is the one
    salt, proof = _row(rows[0])
    cipher = Cipher(key, salt)
    if cipher.decrypt(PROOF_TYPE, proof) != PROOF:
        raise EncryptionError(f"{where}: the keyring's check value is not what this version writes")
    return Serializer(compression=options.compression, cipher=cipher)


def run_plan(plan: Plan, execute) -> Serializer:
    """Runs a plan with `execute(sql, params) -> rows` (a synchronous connection)."""
    try:
        sql, params = next(plan)
        while True:
            sql, params = plan.send(execute(sql, params))
    except StopIteration as done:
        return done.value


async def arun_plan(plan: Plan, execute) -> Serializer:
    """Runs a plan with `await execute(sql, params) -> rows`."""
    try:
        sql, params = next(plan)
        while True:
            sql, params = plan.send(await execute(sql, params))
    except StopIteration as done:
        return done.value
