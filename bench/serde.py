"""Storage options side by side, on databases opened as the agent opens them (savers.open_saver with SaverOptions):
bytes stored and time taken with no compression, gzip, zstd, encryption, and zstd with encryption, on SQLite and Postgres.

    python bench/serde.py                          # SQLite files and a throwaway Postgres (tests/pgserver.py)
    python bench/serde.py --no-postgres            # SQLite only
    python bench/serde.py --numbers 200 --threads 20 --rounds 10
    AGENT_BENCH_POSTGRES_URL=postgresql://user:pw@host/db python bench/serde.py   # your server (it must allow
                                                   # CREATE DATABASE; each option gets a fresh database)

Each thread is graphs/cot.py answering its own sum of N numbers with the built-in offline model and the reply
cache, durability="sync", as the agent runs it. Per thread: "stored" is the bytes of the stored values (SQLite:
checkpoints.checkpoint + metadata + parent_writes, writes.value, agent_blobs.blob; Postgres:
checkpoints.checkpoint::text + metadata::text, checkpoint_writes.blob, checkpoint_blobs.blob); "cache" the
reply cache's values; "file" the SQLite file after VACUUM; "run" the median time to reason (every checkpoint
written); "read" the median time to read the thread's whole history back. Options take turns in a shuffled
order within each round, so load from elsewhere on the machine hits them alike; "× none" is the median over
rounds of run time / none's in that round.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import savers  # noqa: E402
from agent.offline import OfflineChatModel  # noqa: E402
from bench.savers import Postgres, machine  # noqa: E402
from graphs.cot import build_graph, fresh_state  # noqa: E402
from savers.keyring import SALT_BYTES  # noqa: E402
from savers.serde import SCRYPT_N, SCRYPT_P, SCRYPT_R, Cipher  # noqa: E402

KEY = "a bench passphrase, long enough"
OPTIONS = {
    "none": savers.SaverOptions(),
    "gzip": savers.SaverOptions(compression="gzip"),
    "zstd": savers.SaverOptions(compression="zstd"),
    "encrypted": savers.SaverOptions(encryption_key=KEY),
    "zstd+encrypted": savers.SaverOptions(compression="zstd", encryption_key=KEY),
}
BASELINE = "none"

SQLITE_STORED = ("SELECT sum(length(CAST(checkpoint AS BLOB)) + length(CAST(metadata AS BLOB))) FROM checkpoints",
                 "SELECT sum(length(CAST(value AS BLOB))) FROM writes",
                 "SELECT sum(length(parent_writes)) FROM checkpoints",  # a step's writes, carried by the next row
                 "SELECT sum(length(CAST(blob AS BLOB))) FROM agent_blobs")
POSTGRES_STORED = ("SELECT sum(octet_length(checkpoint::text) + octet_length(metadata::text)) FROM checkpoints",
                   "SELECT sum(octet_length(blob)) FROM checkpoint_writes",
                   "SELECT sum(octet_length(blob)) FROM checkpoint_blobs")
SQLITE_CACHE = "SELECT sum(length(CAST(value AS BLOB))) FROM agent_llm_cache"
POSTGRES_CACHE = "SELECT sum(octet_length(value)) FROM agent_llm_cache"


def question(numbers: int, n: int) -> str:
    """The n-th thread's question: its own numbers, so every thread pays the model and fills the reply cache."""
    return "What is " + "+".join(str(k) for k in range(101 + n, 101 + n + numbers)) + "?"


@dataclass
class Database:
    """One option on one backend: an open saver, its graph, and what its threads took."""

    backend: str
    option: str
    url: str
    graph: object = None
    threads: int = 0
    checkpoints: int = 0  # in the last thread
    runs: list[list[float]] = field(default_factory=list)  # per round
    reads: list[float] = field(default_factory=list)
    stored: int = 0  # bytes, over all threads
    cache: int = 0
    file: int | None = None  # SQLite only

    def open(self, stack: ExitStack) -> None:
        saver = stack.enter_context(savers.open_saver(self.url, options=OPTIONS[self.option]))
        self.graph = build_graph(OfflineChatModel(), cache=saver.response_cache, model_id="offline").compile(
            checkpointer=saver)

    def run(self, numbers: int, count: int) -> list[float]:
        """Reason `count` new threads; returns their run times (and keeps their history read times)."""
        times = []
        for _ in range(count):
            config = {"configurable": {"thread_id": f"t{self.threads}"}, "recursion_limit": numbers + 20}
            started = time.perf_counter()
            self.graph.invoke(fresh_state(question(numbers, self.threads)), config, durability="sync")
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            self.checkpoints = len(list(self.graph.get_state_history(config)))
            self.reads.append(time.perf_counter() - started)
            self.threads += 1
        return times


def sqlite_sizes(path: Path) -> tuple[int, int, int]:
    """(stored value bytes, reply cache bytes, file bytes after VACUUM) of a closed SQLite database."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        stored = sum(conn.execute(sql).fetchone()[0] or 0 for sql in SQLITE_STORED)
        cache = conn.execute(SQLITE_CACHE).fetchone()[0] or 0
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
    finally:
        conn.close()
    return stored, cache, path.stat().st_size


def postgres_sizes(url: str) -> tuple[int, int, None]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        stored = sum(conn.execute(sql).fetchone()[0] or 0 for sql in POSTGRES_STORED)
        return stored, conn.execute(POSTGRES_CACHE).fetchone()[0] or 0, None


def key_derivation_ms() -> float:
    """One scrypt derivation, as an encrypted database's first open in a process pays it (a fresh salt)."""
    started = time.perf_counter()
    Cipher(KEY, os.urandom(SALT_BYTES))
    return (time.perf_counter() - started) * 1000


def measure(databases: list[Database], numbers: int, rounds: int, threads: int) -> None:
    with ExitStack() as stack:
        for db in databases:
            db.open(stack)
            db.run(numbers, 1)  # warm up: imports, prepared statements, the key derivation; counted in bytes
        per_round = max(1, threads // rounds)
        order = list(databases)
        shuffle = random.Random(5).shuffle
        for r in range(rounds):
            shuffle(order)
            for db in order:
                db.runs.append(db.run(numbers, per_round))
            print(f"  round {r + 1}/{rounds}", file=sys.stderr)


def report(databases: list[Database]) -> None:
    print("| backend | option | stored/thread | vs none | cache/thread | file/thread | run/thread | × none "
          "| read/thread |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = {db.backend: db for db in databases if db.option == BASELINE}
    for db in databases:
        none = base[db.backend]
        ratio = statistics.median(statistics.median(mine) / statistics.median(theirs)
                                  for mine, theirs in zip(db.runs, none.runs))
        file = f"{db.file / db.threads / 1024:,.1f} KB" if db.file is not None else "-"
        print(f"| {db.backend} | {db.option} | {db.stored / db.threads / 1024:,.1f} KB "
              f"| {db.stored / none.stored - 1:+.0%} | {db.cache / db.threads / 1024:,.1f} KB | {file} "
              f"| {statistics.median(t for batch in db.runs for t in batch) * 1000:,.0f} ms | {ratio:.2f} "
              f"| {statistics.median(db.reads) * 1000:,.1f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numbers", type=int, default=60, help="numbers in each question's sum (60: 63 checkpoints)")
    parser.add_argument("--threads", type=int, default=8, help="timed threads per option and backend (8)")
    parser.add_argument("--rounds", type=int, default=4, help="shuffled rounds the timed threads are spread over (4)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()

    kdf_ms = key_derivation_ms()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        pg = None if args.no_postgres else Postgres(stack)
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
        if pg:
            print(f"postgres: {pg.note}")
        databases = [Database("sqlite", name, f"sqlite:///{Path(tmp) / name}.db") for name in OPTIONS]
        if pg:
            databases += [Database("postgres", name, pg.database()) for name in OPTIONS]
        measure(databases, args.numbers, args.rounds, args.threads)
        for db in databases:
            db.stored, db.cache, db.file = (sqlite_sizes(Path(tmp) / f"{db.option}.db") if db.backend == "sqlite"
                                            else postgres_sizes(db.url))
        print(f"{databases[0].threads} threads per option and backend ({args.threads} timed, in {args.rounds} "
              f"shuffled rounds), each a sum of {args.numbers} numbers: {databases[0].checkpoints} checkpoints\n")
        report(databases)
    print(f"\nkey derivation (scrypt n=2^{SCRYPT_N.bit_length() - 1}, r={SCRYPT_R}, p={SCRYPT_P}): {kdf_ms:.0f} ms, "
          "once per process and encrypted database (then cached)")


if __name__ == "__main__":
    main()
