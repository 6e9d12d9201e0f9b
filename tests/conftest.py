"""Shared fixtures: a real Postgres server, a fresh database per test on each backend, the HTTP test model,
and a way to run the CLI as a user would (a real `python -m agent` process)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llm_server import LLMServer  # noqa: E402
from pgserver import postgres_server  # noqa: E402

BACKENDS = ["sqlite", "postgres"]


MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's default): one worker per core, at most MAX_WORKERS. Most tests wait on
    subprocesses and servers, but the ones that kill a run midway or race two writers need a core that is not
    oversubscribed to mean what they say; each worker also starts its own Postgres server."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


@pytest.fixture(scope="session")
def pg():
    """One real Postgres per test process (AGENT_TEST_POSTGRES_URL, else a throwaway embedded server); each
    test gets its own database on it, so parallel workers sharing AGENT_TEST_POSTGRES_URL do not meet.

    Its files live outside pytest's own temp tree: another pytest session starting meanwhile resets that
    tree to mode 0700, which would lock out the unprivileged user the server runs as."""
    root = Path(tempfile.mkdtemp(prefix="agent-test-pg-"))
    try:
        with postgres_server(root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fresh_db_url(backend: str, request, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'agent.db'}"
    server = request.getfixturevalue("pg")
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = server.create_database(name)
    request.addfinalizer(lambda: server.drop_database(name))
    return url


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    """An empty database of each backend, new for every test."""
    return fresh_db_url(request.param, request, tmp_path)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No setting of the developer's machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("AGENT_", "OPENAI_")) and name != "AGENT_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def llm(monkeypatch):
    """The OpenAI-compatible HTTP test server, with this process's environment pointed at it."""
    with LLMServer() as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        yield server


def craft_write(conn, channel: str, type_: str, value: bytes) -> int:
    """Puts a crafted (type, value) in place of every stored write to `channel` of a plaintext database, as an
    attacker with access to it would: in its own row, or inside a task's packed row (savers.compact.PACKED).
    `conn`: a sqlite3 or psycopg connection. Returns how many writes it replaced."""
    import ormsgpack

    from savers.compact import PACKED

    if isinstance(conn, sqlite3.Connection):
        table, column, key, param = "writes", "value", "rowid", "?"
    else:
        table, column, key, param = "checkpoint_writes", "blob", "ctid", "%s"
    replaced = conn.execute(f"UPDATE {table} SET type = {param}, {column} = {param} WHERE channel = {param}",
                            (type_, value, channel)).rowcount

    def crafted(packed: bytes) -> bytes | None:
        """A packed row with the channel's writes crafted, or None when it has none."""
        nonlocal replaced
        entries = ormsgpack.unpackb(packed)
        hits = [i for i, entry in enumerate(entries) if entry[0] == channel]
        for i in hits:
            entries[i] = [channel, type_, value]
        replaced += len(hits)
        return ormsgpack.packb(entries) if hits else None

    for row_key, packed in conn.execute(f"SELECT {key}, {column} FROM {table} WHERE type = {param}",
                                        (PACKED,)).fetchall():
        if (new := crafted(packed)) is not None:
            conn.execute(f"UPDATE {table} SET {column} = {param} WHERE {key} = {param}", (new, row_key))
    if isinstance(conn, sqlite3.Connection):  # and the writes a step's checkpoint row carries for its parent

        def craft(entry):
            nonlocal replaced
            if entry[3] == channel:
                replaced += 1
                return [*entry[:4], type_, value]
            if entry[4] == PACKED and (new := crafted(entry[5])) is not None:
                return [*entry[:5], new]
            return entry

        rewrite_carried(conn, craft)
    return replaced


def rewrite_carried(conn: sqlite3.Connection, change) -> None:
    """Rewrites every write that checkpoint rows of a SQLite database carry for their parents (parent_writes,
    savers.sqlite.HeldWrites.put_row): each entry [task_id, task_path, idx, channel, type, value] -> change(entry)."""
    import ormsgpack

    for rowid, data in conn.execute("SELECT rowid, parent_writes FROM checkpoints WHERE parent_writes IS NOT NULL"
                                    ).fetchall():
        entries = [change(list(entry)) for entry in ormsgpack.unpackb(data)]
        conn.execute("UPDATE checkpoints SET parent_writes = ? WHERE rowid = ?", (ormsgpack.packb(entries), rowid))


class CLI:
    """Runs `python -m agent ...` in a working directory, as a person at a terminal would."""

    def __init__(self, cwd: Path):
        self.cwd = cwd

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "OPENAI_"))}
        env.update(extra or {})
        return env

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", *args], cwd=self.cwd, env=self.env(env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def __call__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
        return subprocess.run(
            [sys.executable, "-m", "agent", *args], cwd=self.cwd, env=self.env(env),
            capture_output=True, text=True, timeout=timeout,
        )


@pytest.fixture
def cli(tmp_path) -> CLI:
    return CLI(tmp_path)
