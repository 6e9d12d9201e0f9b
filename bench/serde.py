"""Storage options for checkpoint values (savers.serde) side by side: bytes stored and time spent, with no
compression, gzip, zstd, encryption, and zstd with encryption, on long real threads of the agent's graph.

    python bench/serde.py                          # 10 threads, each a sum of 60 numbers (63 checkpoints)
    python bench/serde.py --numbers 200 --threads 5 --rounds 5

Each thread is graphs/cot.py run by the built-in offline model on our SQLite saver, durability="sync", as the
agent runs it. "values" is the bytes of the stored values (checkpoints, writes, blobs); "file" the database
file after VACUUM; "run" the time to reason (every checkpoint written); "read" the time to read a thread's
whole history back; "value" the cost of one dumps_typed + loads_typed, averaged over every stored value.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from agent.offline import OfflineChatModel  # noqa: E402
from graphs.cot import build_graph, fresh_state  # noqa: E402
from savers.serde import Serializer, make_serde  # noqa: E402
from savers.sqlite import PRAGMAS, Sqlite  # noqa: E402

KEY = "a bench passphrase, long enough"
OPTIONS = {
    "none": {},
    "gzip": {"compression": "gzip"},
    "zstd": {"compression": "zstd"},
    "encrypted": {"encryption_key": KEY},
    "zstd+encrypted": {"compression": "zstd", "encryption_key": KEY},
}


def question(numbers: int) -> str:
    return "What is " + "+".join(str(n) for n in range(101, 101 + numbers)) + "?"


def value_bytes(conn: sqlite3.Connection) -> int:
    return sum(conn.execute(sql).fetchone()[0] or 0 for sql in (
        "SELECT sum(length(checkpoint)) FROM checkpoints", "SELECT sum(length(value)) FROM writes",
        "SELECT sum(length(blob)) FROM agent_blobs"))


def measure(serde: Serializer, directory: Path, q: str, threads: int) -> dict:
    path = directory / "bench.db"
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    saver = Sqlite(conn, serde=serde)
    saver.setup()
    graph = build_graph(OfflineChatModel()).compile(checkpointer=saver)
    runs, reads = [], []
    for n in range(threads):
        config = {"configurable": {"thread_id": f"t{n}"}}
        started = time.perf_counter()
        graph.invoke(fresh_state(q), config, durability="sync")
        runs.append(time.perf_counter() - started)
        started = time.perf_counter()
        checkpoints = len(list(graph.get_state_history(config)))
        reads.append(time.perf_counter() - started)
    stored = value_bytes(conn)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    conn.close()
    return {"values": stored / threads, "file": path.stat().st_size / threads, "checkpoints": checkpoints,
            "run": statistics.median(runs), "read": statistics.median(reads)}


def real_values(q: str) -> list:
    """Every value a thread stores (checkpoints, metadata, pending writes), as the saver hands them over."""
    with tempfile.TemporaryDirectory() as directory:
        conn = sqlite3.connect(Path(directory) / "values.db", check_same_thread=False, isolation_level=None)
        saver = Sqlite(conn, serde=make_serde())
        saver.setup()
        graph = build_graph(OfflineChatModel()).compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "t"}}
        graph.invoke(fresh_state(q), config, durability="sync")
        values = [v for t in saver.list(config) for v in (t.checkpoint, t.metadata, *(w[2] for w in t.pending_writes))]
        conn.close()
    return values


def per_value_us(serde: Serializer, values: list, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for value in values:
            serde.loads_typed(serde.dumps_typed(value))
        best = min(best, time.perf_counter() - started)
    return best / len(values) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numbers", type=int, default=60, help="numbers in each question's sum (plan steps + 1)")
    parser.add_argument("--threads", type=int, default=10, help="threads per option")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions of the whole measurement (best kept)")
    args = parser.parse_args()
    q = question(args.numbers)

    started = time.perf_counter()
    make_serde(encryption_key=KEY)
    kdf_ms = (time.perf_counter() - started) * 1000  # scrypt, once per process and key (then cached)
    values = real_values(q)

    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, options in OPTIONS.items():
            with tempfile.TemporaryDirectory() as directory:
                result = measure(make_serde(**options), Path(directory), q, args.threads)
            result["value"] = per_value_us(make_serde(**options), values, 3)
            kept = results.setdefault(name, result)
            for key in ("run", "read", "value"):
                kept[key] = min(kept[key], result[key])

    base = results["none"]
    print(f"Python {platform.python_version()}, {platform.machine()}; {args.threads} threads x {args.rounds} rounds; "
          f"each thread a sum of {args.numbers} numbers: {base['checkpoints']} checkpoints")
    print(f"{'option':<16}{'values/thread':>15}{'vs none':>9}{'file/thread':>13}{'vs none':>9}"
          f"{'run':>10}{'read':>10}{'value':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['values'] / 1024:>12.1f} KB{r['values'] / base['values'] - 1:>+9.0%}"
              f"{r['file'] / 1024:>10.1f} KB{r['file'] / base['file'] - 1:>+9.0%}"
              f"{r['run'] * 1000:>8.1f}ms{r['read'] * 1000:>8.1f}ms{r['value']:>8.1f}us")
    print(f"key derivation (scrypt n=2^15, r=8, p=1): {kdf_ms:.0f} ms once per process; "
          f"{len(values)} values per thread in the 'value' column")


if __name__ == "__main__":
    main()
