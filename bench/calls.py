"""The savers' own cost per step, without LangGraph around them: one thread of graphs/cot.py is run once on
an InMemorySaver that records every call LangGraph makes (get_tuple, put, put_writes, with their arguments),
then those calls are replayed against each saver for many fresh thread ids, one thread, nothing else running
in the process. Prints microseconds per step in each kind of call and the process CPU time per step.

    python bench/calls.py                  # SQLite and a throwaway Postgres (tests/pgserver.py)
    python bench/calls.py --no-postgres --threads 500

A step of a run is CPU-bound (its process CPU time equals its wall time: bench/RESULTS.md, "Where the time
goes"), so this is the number a change to a saver's write path moves first; bench/savers.py then says whether
the ratio to InMemorySaver moved beyond its run-to-run noise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

import savers  # noqa: E402


def _bench_savers():
    """bench/savers.py (its graph, stock savers, throwaway Postgres), loaded by path: as a module on sys.path
    its name would hide the savers package."""
    spec = importlib.util.spec_from_file_location("bench_savers", ROOT / "bench" / "savers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench_savers()

KINDS = ("get_tuple", "put", "put_writes")


class Recorder(InMemorySaver):
    """An InMemorySaver that keeps the calls LangGraph makes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def get_tuple(self, config):
        self.calls.append(("get_tuple", config))
        return super().get_tuple(config)

    def put(self, config, checkpoint, metadata, new_versions):
        self.calls.append(("put", config, checkpoint, metadata, new_versions))
        return super().put(config, checkpoint, metadata, new_versions)

    def put_writes(self, config, writes, task_id, task_path=""):
        self.calls.append(("put_writes", config, writes, task_id, task_path))
        return super().put_writes(config, writes, task_id, task_path)


def record(steps: int) -> list[tuple]:
    recorder = Recorder()
    bench.compiled(recorder, steps).invoke(bench.fresh_state(bench.QUESTION), {
        "configurable": {"thread_id": "recorded"}, "recursion_limit": steps + 10}, durability="sync")
    return recorder.calls


def _for(config: dict, thread_id: str) -> dict:
    return {**config, "configurable": {**config["configurable"], "thread_id": thread_id}}


def replay(saver, calls: list[tuple], threads: int, steps: int) -> dict[str, float]:
    """Microseconds per step in each kind of call, and process CPU per step ("cpu")."""
    spent = dict.fromkeys(KINDS, 0.0)
    cpu = time.process_time()
    for _ in range(threads):
        thread_id = uuid.uuid4().hex
        for kind, config, *args in calls:
            start = time.perf_counter()
            getattr(saver, kind)(_for(config, thread_id), *args)
            spent[kind] += time.perf_counter() - start
    cpu = time.process_time() - cpu
    per_step = 1e6 / (threads * steps)
    return {**{kind: seconds * per_step for kind, seconds in spent.items()}, "cpu": cpu * per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=300, help="replayed threads per saver and round (300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (3)")
    parser.add_argument("--steps", type=int, default=10, help="steps of the recorded thread (10)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    calls = record(args.steps)
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        found = {"InMemorySaver (stock)": InMemorySaver(),
                 "SqliteSaver (stock)": stack.enter_context(bench.stock_sqlite(f"{tmp}/stock.db")),
                 "ours sqlite": stack.enter_context(savers.open_saver(f"sqlite:///{tmp}/ours.db"))}
        if not args.no_postgres:
            pg = bench.Postgres(stack)
            found["PostgresSaver (stock)"] = stack.enter_context(bench.stock_postgres(pg.database()))
            found["ours postgres"] = stack.enter_context(savers.open_saver(pg.database()))
        print(f"machine: {bench.machine()}")
        print(f"{len(calls)} calls per thread of {args.steps} steps, replayed for {args.threads} threads per saver "
              f"in {args.rounds} rounds (median)\n")
        for saver in found.values():  # warm up: prepared statements, caches
            replay(saver, calls, 20, args.steps)
        results: dict[str, list[dict]] = {name: [] for name in found}
        for _ in range(args.rounds):
            for name, saver in found.items():
                results[name].append(replay(saver, calls, args.threads, args.steps))
        # CPU of this process only: a Postgres server's own work is not in it.
        print("| saver | get_tuple µs/step | put µs/step | put_writes µs/step | process CPU µs/step |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, runs in results.items():
            cells = [statistics.median(run[key] for run in runs) for key in (*KINDS, "cpu")]
            print(f"| {name} | " + " | ".join(f"{cell:,.1f}" for cell in cells) + " |")


if __name__ == "__main__":
    main()
