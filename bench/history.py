"""`history` and `threads` on long threads: statements sent to the database and seconds taken, by thread length.

    python bench/history.py                      # SQLite, then a throwaway Postgres (tests/pgserver.py)
    python bench/history.py --lengths 10,1000 --sqlite-only

A thread of N checkpoints is a real run of the offline model, then edits (one checkpoint each) whose result
list grows by one item per edit, with a branch off an early checkpoint every 250 (tests/test_history.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from agent import Agent  # noqa: E402
from test_history import grow, statements  # noqa: E402


def best_of(rounds: int, call) -> float:
    """The fastest of `rounds` runs of `call`, in seconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(backend: str, url: str, lengths: list[int], rounds: int) -> None:
    for n in lengths:
        thread = f"n{n}"
        grow(url, thread, n)
        with Agent(db=url) as agent:
            middle = agent.history(thread)[n // 2].checkpoint_id
            calls = {
                "history": lambda: agent.history(thread),
                "history --limit 50": lambda: agent.history(thread, limit=50, before=middle),
                "threads": agent.threads,
            }
            for name, call in calls.items():
                with statements(agent) as sent:
                    call()
                seconds = best_of(rounds, call)
                print(f"{backend:8} {n:6} checkpoints  {name:20} {len(sent):5} statements  {seconds * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="10,100,1000,4000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        measure("sqlite", f"sqlite:///{tmp}/bench.db", lengths, args.rounds)
        if not args.sqlite_only:
            from pgserver import postgres_server

            with postgres_server(Path(tmp)) as server:
                measure("postgres", server.create_database("bench_history"), lengths, args.rounds)


if __name__ == "__main__":
    main()
