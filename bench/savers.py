"""Stock LangGraph savers against ours, side by side in one process: time per step (and its ratio to the
in-memory saver) and bytes stored per checkpoint as threads grow longer, on SQLite and Postgres.

    python bench/savers.py                 # starts a throwaway Postgres (tests/pgserver.py)
    AGENT_BENCH_POSTGRES_URL=postgresql://user:pw@host/db python bench/savers.py   # or use yours (it must
                                           # allow CREATE DATABASE; each measurement gets a fresh database)
    python bench/savers.py --rounds 3 --threads 50 --lengths 10,100   # quicker

The graph is graphs/cot.py's (analyze -> execute per plan step -> validate) with an instant fake model, run
with durability="sync" as the agent runs it. A thread of N steps has a plan of N-2 steps.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402

import savers  # noqa: E402
from graphs import prompts  # noqa: E402
from graphs.cot import build_graph, fresh_state  # noqa: E402

BASELINE = "InMemorySaver (stock)"
# Issue 5's goals: ratio to InMemorySaver, measured in one run on the same graph.
GOALS = {"ours sqlite": 1.25, "ours async sqlite": 1.25, "ours postgres": 1.6, "ours async postgres": 1.6}
QUESTION = "What is the product of the first numbers, step by step?"


class InstantModel(BaseChatModel):
    """Answers every structured request at once: a plan of `plan_steps` steps, distinct step results, ok."""

    plan_steps: int = 8

    @property
    def _llm_type(self) -> str:
        return "instant"

    def _generate(self, *args, **kwargs):
        raise NotImplementedError("only structured output is used")

    def with_structured_output(self, schema, *, method=None, include_raw=False, **kwargs):
        numbers = itertools.count(1)

        def answer(messages):
            raw = AIMessage(content="", usage_metadata={"input_tokens": 120, "output_tokens": 12, "total_tokens": 132})
            n = next(numbers)
            if schema is prompts.Plan:
                parsed = prompts.Plan(steps=[f"Multiply the result of step {i} by {i + 17}" for i in
                                             range(1, self.plan_steps + 1)])
            elif schema is prompts.StepResult:
                parsed = prompts.StepResult(result=str(n * 7919 % 1000003))
            else:
                parsed = prompts.Verdict(ok=True, answer="42", reason="recomputed independently: the draft matches")
            return {"raw": raw, "parsed": parsed, "parsing_error": None}

        return RunnableLambda(answer)


def compiled(saver, steps: int):
    return build_graph(InstantModel(plan_steps=steps - 2)).compile(checkpointer=saver)


def run_threads(graph, n_threads: int, steps: int, saver) -> float:
    """Milliseconds per step for n_threads fresh threads of `steps` steps each."""
    kwargs = {"durability": "sync"} if saver is not None else {}
    gc.collect()
    start = time.perf_counter()
    for _ in range(n_threads):
        config = {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": steps + 10}
        graph.invoke(fresh_state(QUESTION), config, **kwargs)
    return (time.perf_counter() - start) * 1000 / (n_threads * steps)


async def arun_threads(graph, n_threads: int, steps: int, saver) -> float:
    kwargs = {"durability": "sync"} if saver is not None else {}
    gc.collect()
    start = time.perf_counter()
    for _ in range(n_threads):
        config = {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": steps + 10}
        await graph.ainvoke(fresh_state(QUESTION), config, **kwargs)
    return (time.perf_counter() - start) * 1000 / (n_threads * steps)


# -- the savers ---------------------------------------------------------------------------------------------


class Postgres:
    """Fresh databases on one server: AGENT_BENCH_POSTGRES_URL's, or a throwaway one."""

    def __init__(self, stack: ExitStack):
        url = os.environ.get("AGENT_BENCH_POSTGRES_URL")
        from pgserver import PgServer, postgres_server

        if url:
            self.server = PgServer.from_url(url)
            self.note = "AGENT_BENCH_POSTGRES_URL"
        else:
            self.server = stack.enter_context(postgres_server(Path(tempfile.mkdtemp(prefix="bench-"))))
            self.note = "throwaway embedded server (tests/pgserver.py: fsync=off, synchronous_commit=off)"
        self.stack = stack

    def database(self) -> str:
        name = f"bench_{uuid.uuid4().hex[:12]}"
        url = self.server.create_database(name)
        self.stack.callback(self.server.drop_database, name)
        return url


@contextmanager
def stock_sqlite(path: str):
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(path, check_same_thread=False)
    try:
        saver = SqliteSaver(conn)
        saver.setup()
        yield saver
    finally:
        conn.close()


@contextmanager
def stock_postgres(url: str):
    from langgraph.checkpoint.postgres import PostgresSaver

    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
        yield saver


def sync_savers(stack: ExitStack, pg: Postgres | None, workdir: Path) -> dict:
    from langgraph.checkpoint.memory import InMemorySaver

    found = {"no checkpointer": None, "InMemorySaver (stock)": InMemorySaver(),
             "SqliteSaver (stock)": stack.enter_context(stock_sqlite(str(workdir / "stock.db"))),
             "ours sqlite": stack.enter_context(savers.open_saver(f"sqlite:///{workdir / 'ours.db'}"))}
    if pg:
        found["PostgresSaver (stock)"] = stack.enter_context(stock_postgres(pg.database()))
        found["ours postgres"] = stack.enter_context(savers.open_saver(pg.database()))
    return found


# -- time ---------------------------------------------------------------------------------------------------


def bench_time(pg: Postgres | None, rounds: int, threads: int, steps: int, workdir: Path) -> dict[str, tuple]:
    """Per saver: (ms/step over all rounds, its ratio to InMemorySaver's, (median, lower and upper quartile)
    over rounds of its ratio to InMemorySaver in the same round, a 95% interval of the ratio over all
    rounds). Savers take turns in a shuffled order within each round, so load from elsewhere on the machine
    hits them alike; the ratio within a round is the robust number, and the ratio over all rounds the one that
    counts work done in bursts (SQLite copies its WAL back every few hundred steps: a round with such a copy
    takes longer, and a median of rounds leaves it out)."""
    with ExitStack() as stack:
        found = sync_savers(stack, pg, workdir)
        graphs = {name: compiled(saver, steps) for name, saver in found.items()}
        for name, saver in found.items():  # warm up: imports, prepared statements, caches
            run_threads(graphs[name], 3, steps, saver)
        return _rounds(found, rounds, lambda name, n: run_threads(graphs[name], n, steps, found[name]), threads)


def _rounds(found: dict, rounds: int, run, threads: int) -> dict[str, tuple]:
    order = list(found)
    times: dict[str, list[float]] = {name: [] for name in found}
    per_round = max(1, threads // rounds)
    shuffle = random.Random(5).shuffle
    for r in range(rounds):
        shuffle(order)
        for name in order:
            times[name].append(run(name, per_round))
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in times.items()),
              file=sys.stderr)
    base = times.get(BASELINE)
    return {name: (statistics.mean(v), statistics.mean(v) / statistics.mean(base) if base else None,
                   _spread([t / b for t, b in zip(v, base)]) if base else None,
                   _interval(v, base) if base else None) for name, v in times.items()}


def _spread(ratios: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of a saver's per-round ratios: how far one run's number can be trusted."""
    if len(ratios) < 4:
        return statistics.median(ratios), min(ratios), max(ratios)
    low, _, high = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), low, high


def _interval(times: list[float], base: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95% interval of the ratio over all rounds (mean time over InMemorySaver's mean time), by resampling
    whole rounds with replacement: a round keeps its saver's and InMemorySaver's times together, so load that
    hit both in one round stays paired. With the goals it says whether a run met one, missed it, or cannot
    tell (the interval straddles the goal): a single run's ratio moves by about 0.1 on a shared VM."""
    draw = random.Random(11).choices
    rounds = range(len(times))
    ratios = sorted(sum(times[i] for i in picked) / sum(base[i] for i in picked)
                    for picked in (draw(rounds, k=len(times)) for _ in range(resamples)))
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def verdict(name: str, interval: tuple[float, float] | None) -> str:
    """Whether a saver with a goal (GOALS) met it in this run, by its interval."""
    goal = GOALS.get(name)
    if goal is None or interval is None:
        return "-"
    if interval[1] <= goal:
        return f"met (<= {goal})"
    if interval[0] > goal:
        return f"missed (> {goal})"
    return f"undecided ({goal} inside)"


def bench_async_time(pg: Postgres | None, rounds: int, threads: int, steps: int, workdir: Path) -> dict[str, float]:
    async def main():
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncExit() as stack:
            found = {"InMemorySaver (stock)": InMemorySaver()}
            found["AsyncSqliteSaver (stock)"] = await stack.enter(
                AsyncSqliteSaver.from_conn_string(str(workdir / "astock.db")))
            await found["AsyncSqliteSaver (stock)"].setup()
            found["ours async sqlite"] = await stack.enter(savers.open_async_saver(f"sqlite:///{workdir / 'aours.db'}"))
            if pg:
                from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

                found["AsyncPostgresSaver (stock)"] = await stack.enter(AsyncPostgresSaver.from_conn_string(pg.database()))
                await found["AsyncPostgresSaver (stock)"].setup()
                found["ours async postgres"] = await stack.enter(savers.open_async_saver(pg.database()))
            graphs = {name: compiled(saver, steps) for name, saver in found.items()}
            for name, saver in found.items():
                await arun_threads(graphs[name], 3, steps, saver)
            loop = asyncio.get_running_loop()

            def run(name, n):  # _rounds is sync: run each batch to completion in a worker thread's loop
                return asyncio.run_coroutine_threadsafe(arun_threads(graphs[name], n, steps, found[name]),
                                                        loop).result()

            return await loop.run_in_executor(None, _rounds, found, rounds, run, threads)

    return asyncio.run(main())


class AsyncExit:
    def __init__(self):
        self.exits = []

    async def enter(self, cm):
        value = await cm.__aenter__()
        self.exits.append(cm)
        return value

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for cm in reversed(self.exits):
            await cm.__aexit__(*exc)


# -- size ---------------------------------------------------------------------------------------------------


def sqlite_bytes(path: str) -> int:
    """Bytes of pages in use (tables and indexes), after moving the WAL into the database file."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count",
                                                                                  "page_size"))
        return (pages - free) * size
    finally:
        conn.close()


PG_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


def postgres_bytes(url: str) -> int:
    """Bytes of the saver's tables with their indexes and TOAST."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return sum(conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0] for t in PG_TABLES)


def fill(saver, length: int, total: int) -> int:
    """Threads of `length` steps, enough of them for about `total` checkpoints; returns checkpoints written."""
    graph = compiled(saver, length)
    threads = max(1, total // length)
    run_threads(graph, threads, length, saver)
    return threads * (length + 1)  # the input checkpoint, then one per step


def bench_size(pg: Postgres | None, lengths: list[int], total: int, workdir: Path) -> dict[str, dict[int, float]]:
    sizes: dict[str, dict[int, float]] = {}
    for length in lengths:
        for name, opener in (("SqliteSaver (stock)", stock_sqlite), ("ours sqlite", None)):
            path = str(workdir / f"size-{uuid.uuid4().hex[:8]}.db")
            with (opener(path) if opener else savers.open_saver(f"sqlite:///{path}")) as saver:
                before = sqlite_bytes(path)
                checkpoints = checkpoint_count(saver, fill(saver, length, total))
            sizes.setdefault(name, {})[length] = (sqlite_bytes(path) - before) / checkpoints
        if pg:
            for name, opener in (("PostgresSaver (stock)", stock_postgres), ("ours postgres", None)):
                url = pg.database()
                with (opener(url) if opener else savers.open_saver(url)) as saver:
                    before = postgres_bytes(url)
                    checkpoints = checkpoint_count(saver, fill(saver, length, total))
                sizes.setdefault(name, {})[length] = (postgres_bytes(url) - before) / checkpoints
    return sizes


def checkpoint_count(saver, expected: int) -> int:
    counted = sum(1 for _ in saver.list(None))
    return counted or expected


# -- report -------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"


def report_time(title: str, times: dict[str, tuple]) -> None:
    print(f"\n{title}\n")
    print("| saver | ms per step | × InMemorySaver | 95% interval | goal | median round | middle half of rounds |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for name, (ms, overall, ratio, interval) in times.items():
        if ratio is None:
            print(f"| {name} | {ms:.2f} | - | - | - | - | - |")
        else:
            print(f"| {name} | {ms:.2f} | {overall:.2f} | {interval[0]:.2f}-{interval[1]:.2f} | "
                  f"{verdict(name, interval)} | {ratio[0]:.2f} | {ratio[1]:.2f}-{ratio[2]:.2f} |")


def report_size(sizes: dict[str, dict[int, float]], lengths: list[int], total: int) -> None:
    print(f"\nBytes stored per checkpoint (tables + indexes; threads of N steps, ~{total} checkpoints each)\n")
    print("| saver | " + " | ".join(f"N={n}" for n in lengths) + " |")
    print("| --- | " + " | ".join("---:" for _ in lengths) + " |")
    for name, by_length in sizes.items():
        print(f"| {name} | " + " | ".join(f"{by_length[n]:,.0f}" for n in lengths) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="timing rounds (20)")
    parser.add_argument("--threads", type=int, default=200, help="threads per saver, over all rounds (200)")
    parser.add_argument("--steps", type=int, default=10, help="steps per thread when timing (10)")
    parser.add_argument("--lengths", default="10,100,1000", help="thread lengths for the size table")
    parser.add_argument("--total", type=int, default=1000, help="about this many checkpoints per size cell")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--async", dest="async_", action="store_true", help="also time the async savers")
    parser.add_argument("--skip-size", action="store_true")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        pg = None if args.no_postgres else Postgres(stack)
        print(f"machine: {machine()}")
        if pg:
            print(f"postgres: {pg.note}")
        print(f"timing: {args.threads} threads x {args.steps} steps per saver, in {args.rounds} shuffled rounds; "
              f"load average {os.getloadavg()[0]:.2f}")
        report_time("Sync savers, time per step", bench_time(pg, args.rounds, args.threads, args.steps, Path(tmp)))
        if args.async_:
            report_time("Async savers, time per step",
                        bench_async_time(pg, args.rounds, args.threads, args.steps, Path(tmp)))
        if not args.skip_size:
            report_size(bench_size(pg, lengths, args.total, Path(tmp)), lengths, args.total)


if __name__ == "__main__":
    main()
