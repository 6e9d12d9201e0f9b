"""Memory and time of a 1,000-step run against a slow database, per way of writing checkpoints: LangGraph's
own durability="async" (stock: saves queue up behind the database), ours (savers.backpressure: at most K
checkpoints made but unsaved), and durability="sync" - with the sync and the async API, on SQLite and Postgres.

    python bench/backpressure.py                       # 1,000 steps; each put and put_writes 5 ms slower
    python bench/backpressure.py --steps 300 --delay-ms 10 --no-postgres

The database is real (our savers; Postgres from tests/pgserver.py as in bench/savers.py, or
AGENT_BENCH_POSTGRES_URL); the harness makes every put and put_writes sleep first, as a remote database's
round trip would. The graph is graphs/cot.py's with bench/savers.py's instant model, which also counts, at
every call, the checkpoints made but not yet saved. Each row runs in a fresh process (memory freed by one
row must not hide another's growth): a short warm-up run, then the measured run on a new thread - its wall
time and how far the process's peak RSS rose above its RSS before it. (tracemalloc would slow the loop down
so much that the database keeps up and nothing queues.) The sync API streams the agent's own modes
(updates, custom), except the `invoke` row: graph.invoke's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from langchain_core.runnables import RunnableLambda  # noqa: E402

import savers  # noqa: E402
from agent.api import STREAM_MODES  # noqa: E402
from bench.savers import QUESTION, InstantModel, Postgres, machine  # noqa: E402
from graphs.cot import build_graph, fresh_state  # noqa: E402
from savers import backpressure  # noqa: E402

CELL_URL = "AGENT_BENCH_CELL_URL"  # the database of a row measured in a process of its own
WAYS = {  # name -> (api, how the run writes its checkpoints)
    "sync API: stock async": ("sync", "stock"),
    "sync API: stock async via invoke": ("sync", "invoke"),
    "sync API: ours (bounded)": ("sync", "bounded"),
    "sync API: sync": ("sync", "sync"),
    "async API: stock async": ("async", "stock"),
    "async API: ours (bounded)": ("async", "bounded"),
    "async API: sync": ("async", "sync"),
}


class SlowDatabase:
    """A real saver whose every put and put_writes first waits `delay` seconds; counts saved checkpoints."""

    def __init__(self, saver, delay: float):
        self.saved = 0
        put, put_writes, aput, aput_writes = saver.put, saver.put_writes, saver.aput, saver.aput_writes

        def slow_put(*args):
            time.sleep(delay)
            stored = put(*args)
            self.saved += 1  # one writer at a time: LangGraph saves a thread's checkpoints one after another
            return stored

        def slow_put_writes(*args):
            time.sleep(delay)
            return put_writes(*args)

        async def slow_aput(*args):
            await asyncio.sleep(delay)
            stored = await aput(*args)
            self.saved += 1
            return stored

        async def slow_aput_writes(*args):
            await asyncio.sleep(delay)
            return await aput_writes(*args)

        saver.put, saver.put_writes, saver.aput, saver.aput_writes = (slow_put, slow_put_writes, slow_aput,
                                                                      slow_aput_writes)


class CountingModel(InstantModel):
    """The instant model, noting at each call how many checkpoints are made but not saved. Call c runs in
    super-step c, after the checkpoints of steps -1 .. c-1 were made."""

    database: object = None
    saved_before: int = 0  # checkpoints the database had saved before this run
    calls: int = 0
    most_unsaved: int = 0

    def with_structured_output(self, schema, **kwargs):
        answer = super().with_structured_output(schema, **kwargs)

        def counted(messages):
            self.calls += 1
            saved = self.database.saved - self.saved_before
            self.most_unsaved = max(self.most_unsaved, self.calls + 1 - saved)
            return answer.invoke(messages)

        return RunnableLambda(counted)


@dataclass
class Cell:
    seconds: float
    rss_mb: float
    most_unsaved: int


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status: this bench measures memory on Linux")


def _graph(saver, how: str, steps: int, database: SlowDatabase):
    model = CountingModel(plan_steps=steps - 2, database=database, saved_before=database.saved)
    checkpointer = backpressure.BoundedSaver(saver) if how == "bounded" else saver
    return build_graph(model).compile(checkpointer=checkpointer), model


def _config(steps: int) -> dict:
    return {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": steps + 10}


def run_sync(saver, how: str, steps: int, bound: int, database: SlowDatabase) -> int:
    graph, model = _graph(saver, how, steps, database)
    state, config = fresh_state(QUESTION), _config(steps)
    if how == "invoke":
        graph.invoke(state, config, durability="async")
    elif how == "stock":
        for _ in graph.stream(state, config, stream_mode=STREAM_MODES, durability="async"):
            pass
    else:
        for _ in backpressure.stream(graph, state, config, stream_mode=STREAM_MODES, max_pending=bound,
                                     durability="async" if how == "bounded" else "sync"):
            pass
    return model.most_unsaved


async def run_async(saver, how: str, steps: int, bound: int, database: SlowDatabase) -> int:
    graph, model = _graph(saver, how, steps, database)
    state, config = fresh_state(QUESTION), _config(steps)
    if how == "stock":
        async for _ in graph.astream(state, config, stream_mode=STREAM_MODES, durability="async"):
            pass
    else:
        async for _ in backpressure.astream(graph, state, config, stream_mode=STREAM_MODES, max_pending=bound,
                                            durability="async" if how == "bounded" else "sync"):
            pass
    return model.most_unsaved


def measure(run) -> Cell:
    """A short run first (imports, connections, first-call costs), then the measured one: wall time, and how
    far the process's peak RSS rose above its RSS before the run."""
    run(20)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # Linux: peak RSS (VmHWM) := RSS now
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    most_unsaved = run(None)
    seconds = time.perf_counter() - start
    return Cell(seconds, (_status_kb("VmHWM") - before) / 1024, most_unsaved)


def cell(name: str, url: str, steps: int, delay: float, bound: int) -> Cell:
    """One row's measurement, in this (fresh) process."""
    api, how = WAYS[name]
    if api == "sync":
        with savers.open_saver(url) as saver:
            database = SlowDatabase(saver, delay)
            return measure(lambda n: run_sync(saver, how, n or steps, bound, database))

    async def main():
        async with savers.open_async_saver(url) as saver:
            database = SlowDatabase(saver, delay)
            loop = asyncio.get_running_loop()

            def run(n):  # measure() is sync: each run goes to completion on this loop, from a worker thread
                return asyncio.run_coroutine_threadsafe(run_async(saver, how, n or steps, bound, database),
                                                        loop).result()

            return await loop.run_in_executor(None, measure, run)

    return asyncio.run(main())


def in_fresh_process(name: str, url: str, args) -> Cell:
    """Each row in a process of its own, so memory one row freed cannot hide another's growth."""
    command = [sys.executable, __file__, "--cell", name, "--steps", str(args.steps), "--delay-ms",
               str(args.delay_ms), "--bound", str(args.bound)]
    done = subprocess.run(command, env={**os.environ, CELL_URL: url}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr}")
    return Cell(**json.loads(done.stdout.splitlines()[-1]))


def bench_backend(url_for, ways: list[str], args) -> dict[str, Cell]:
    runs: dict[str, list[Cell]] = {name: [] for name in ways}
    for r in range(args.rounds):
        for name in ways:
            runs[name].append(in_fresh_process(name, url_for(), args))
            last = runs[name][-1]
            print(f"  round {r + 1}: {name}: {last.seconds:.2f} s, +{last.rss_mb:.1f} MB, "
                  f"{last.most_unsaved} unsaved at most", file=sys.stderr, flush=True)
    return {name: Cell(statistics.median(c.seconds for c in cells), statistics.median(c.rss_mb for c in cells),
                       max(c.most_unsaved for c in cells)) for name, cells in runs.items()}


def report(title: str, cells: dict[str, Cell], steps: int) -> None:
    print(f"\n{title}\n")
    print("| API: durability | wall s | ms/step | peak RSS growth MB | most unsaved | memory × ours | time × ours |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, c in cells.items():
        ours = cells.get(f"{WAYS[name][0]} API: ours (bounded)")
        memory = f"{c.rss_mb / ours.rss_mb:.1f}" if ours and ours.rss_mb > 0 else "-"
        slower = f"{c.seconds / ours.seconds:.2f}" if ours else "-"
        print(f"| {name} | {c.seconds:.2f} | {c.seconds * 1000 / steps:.2f} | {c.rss_mb:.1f} | {c.most_unsaved} | "
              f"{memory} | {slower} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (1000)")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="extra ms per put and put_writes (5)")
    parser.add_argument("--bound", type=int, default=2, help="ours: checkpoints made but unsaved at most (2)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per row; medians are reported (1)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--ways", default=",".join(WAYS), help="comma-separated rows to run (default: all)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: measure one row in this process
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(asdict(cell(args.cell, os.environ[CELL_URL], args.steps, args.delay_ms / 1000,
                                     args.bound))))
        return
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        pg = None if args.no_postgres else Postgres(stack)
        print(f"machine: {machine()}")
        if pg:
            print(f"postgres: {pg.note}")
        print(f"{args.steps} steps per run; every put and put_writes {args.delay_ms:g} ms slower; ours keeps at "
              f"most {args.bound} unsaved; load average {os.getloadavg()[0]:.2f}")
        backends = [("SQLite", lambda: f"sqlite:///{tmp}/{uuid.uuid4().hex[:8]}.db")]
        if pg:
            backends.append(("Postgres", pg.database))
        for label, url_for in backends:
            print(f"{label}:", file=sys.stderr)
            report(f"{label}, {args.steps} steps, +{args.delay_ms:g} ms per write",
                   bench_backend(url_for, ways, args), args.steps)


if __name__ == "__main__":
    main()
