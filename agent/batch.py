"""Batch runs: many questions, each its own thread, on a pool of workers, resumable after a crash.

The output file is the batch's record: a question with a row there is finished for this batch and is never
run or written again; everything else is (re)started or resumed from its thread's last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import AgentError, BadInput, ThreadBusy

# Questions per batch file at most: a guard against feeding it the wrong file, not a design limit.
MAX_QUESTIONS = 1_000_000


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    thread_id: str


@dataclass
class Tally:
    """What the batch has done so far; read by the progress display while workers update it."""

    total: int = 0
    skipped: int = 0  # already had a row in the output
    done: int = 0
    failed: int = 0
    running: int = 0
    busy: int = 0  # being run by another process right now
    spend_usd: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("total", "skipped", "done", "failed", "busy", "spend_usd")}


def read_questions(path: Path, prefix: str) -> list[Question]:
    """JSON lines {"id": ..., "question": ...}, or plain text lines (id = line number). Blank lines skip."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not UTF-8 text") from None
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path.name} line {number}: not valid JSON ({exc.msg})") from None
            question, qid = row.get("question"), row.get("id", number)
            if not isinstance(question, str) or not question.strip():
                raise BadInput(f"{path.name} line {number}: no \"question\" text")
            if not isinstance(qid, (str, int)) or isinstance(qid, bool) or not str(qid).strip():
                raise BadInput(f"{path.name} line {number}: \"id\" must be a non-empty string or number")
        else:
            question, qid = text, number
        qid = str(qid).strip()
        if qid in seen:
            raise BadInput(f"{path.name} line {number}: id '{qid}' was already used on line {seen[qid]}")
        seen[qid] = number
        questions.append(Question(qid, " ".join(question.split()), f"{prefix}{qid}"))
        if len(questions) > MAX_QUESTIONS:
            raise BadInput(f"{path.name} has more than {MAX_QUESTIONS} questions")
    if not questions:
        raise BadInput(f"{path.name} has no questions")
    return questions


@contextlib.contextmanager
def _exclusive(f) -> Iterator[None]:
    """An advisory lock on an open file, between processes (POSIX flock; none where there is no fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: processes sharing one output file are not kept apart
        yield
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class Results:
    """The JSONL output: rows already there, and appending new ones durably, one writer at a time - also
    between processes: two `batch` runs given the same output file (the same command started twice, to go
    faster) each add a row only for an id that has none yet, re-reading under a file lock what the other
    appended, so no question gets two rows (without: 600 rows for 300 questions)."""

    def __init__(self, path: Path, database: str | None = None):
        """`database`: the SQLite file the batch runs on (refused as the output, even before it exists)."""
        self.path = path
        self._lock = threading.Lock()
        self.ids: set[str] = set()
        self.rows: list[dict] = []
        self._file: tuple[int, int] | None = None  # (device, inode) of the file read
        self._read = self._lines = 0  # bytes and lines of it read into ids and rows
        from agent.lifecycle import refuse_overwriting

        refuse_overwriting(path, database)
        try:  # a path that cannot be written is an error before any question runs
            if path.exists():
                with self._locked():
                    pass
            else:
                with contextlib.suppress(FileExistsError):  # made by another process meanwhile: fine
                    path.open("xb").close()
                    path.unlink()
        except OSError as exc:
            raise BadInput(f"cannot write {path}: {exc.strerror}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        """The output file, open for appending, under the file lock, with every row in it read."""
        while True:
            f = self.path.open("a+b")
            try:
                with _exclusive(f):
                    st = os.fstat(f.fileno())
                    if (st.st_dev, st.st_ino) != _identity(self.path):
                        continue  # replaced (forget, in another process) while we waited: open the new one
                    self._catch_up(f, (st.st_dev, st.st_ino))
                    yield f
                    return
            finally:
                f.close()

    def _catch_up(self, f, identity: tuple[int, int]) -> None:
        """Reads the rows appended since the last read (by this process or another). A last line with no end
        was cut short by a writer that died mid-row (writers append whole rows under the file lock): it was
        never complete, so it is dropped and its question runs again."""
        if identity != self._file:  # another file at this path: read it whole
            self.ids, self.rows, self._file, self._read, self._lines = set(), [], identity, 0, 0
        f.seek(self._read)
        raw = f.read()
        good = raw[: raw.rfind(b"\n") + 1]
        for number, line in enumerate(good.decode("utf-8").splitlines(), self._lines + 1):
            self._lines = number
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                self.ids.add(str(row["id"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BadInput(f"{self.path.name} line {number} is not a result row: "
                               "is -o pointing at the right file?") from None
            self.rows.append(row)
        self._read += len(good)
        if len(good) != len(raw):
            f.truncate(self._read)

    def forget(self, statuses: set[str]) -> int:
        """Drop rows with these statuses (rewriting the file atomically), so their questions run again."""
        if not self.path.exists():
            return 0
        with self._lock, self._locked():
            keep = [row for row in self.rows if row.get("status") not in statuses]
            dropped = len(self.rows) - len(keep)
            if dropped:
                tmp = self.path.with_suffix(self.path.suffix + ".tmp")
                data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in keep).encode()
                tmp.write_bytes(data)
                os.replace(tmp, self.path)
                self.rows, self.ids = keep, {str(row["id"]) for row in keep}
                self._file, self._read, self._lines = _identity(self.path), len(data), len(keep)
        return dropped

    def add(self, row: dict) -> bool:
        """Appends a row, fsynced; False, writing nothing, when the file has one for its id already (appended
        by another process since this one last read it)."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        with self._lock, self._locked() as f:
            if str(row["id"]) in self.ids:
                return False
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            self._read += len(line)
            self._lines += 1
            self.ids.add(str(row["id"]))
            self.rows.append(row)
            return True


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _row(item: Question, result) -> dict:
    row = {"id": item.id, "thread_id": item.thread_id, "status": result.status, "answer": result.answer,
           "usage": {k: v for k, v in result.to_dict()["usage"].items()}}
    if result.error:
        row["error"] = result.error
    return row


def run_batch(agent, items: list[Question], results: Results, workers: int,
              on_change: Callable[[Tally], None] | None = None) -> Tally:
    """Run every question that has no row yet; a thread busy in another process is tried once more at the end."""
    tally = Tally(total=len(items))
    todo = [item for item in items if item.id not in results.ids]
    tally.skipped = len(items) - len(todo)
    notify = on_change or (lambda _: None)

    def one(item: Question) -> str:
        with tally.lock:
            tally.running += 1
        notify(tally)
        try:
            result = agent.reason(item.question, item.thread_id)
        except ThreadBusy:
            return "busy"
        except AgentError as exc:  # e.g. the thread holds another question: a row that says so
            failed = {"id": item.id, "thread_id": item.thread_id, "status": "failed", "answer": None,
                      "usage": {}, "error": str(exc)}
            return "failed" if results.add(failed) else "skipped"
        finally:
            with tally.lock:
                tally.running -= 1
        with tally.lock:
            tally.spend_usd = round(tally.spend_usd + (0 if result.from_store else result.usage.cost_usd), 10)
        if not results.add(_row(item, result)):  # another process sharing the output wrote its row first
            return "skipped"
        return "done" if result.status == "done" else "failed"

    def sweep(batch: list[Question]) -> list[Question]:
        busy: list[Question] = []
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch") as pool:
            futures = {pool.submit(one, item): item for item in batch}
            for future in as_completed(futures):
                outcome = future.result()
                with tally.lock:
                    if outcome == "busy":
                        busy.append(futures[future])
                    else:
                        setattr(tally, outcome, getattr(tally, outcome) + 1)
                notify(tally)
        return busy

    still_busy = sweep(sweep(todo))
    tally.busy = len(still_busy)
    notify(tally)
    return tally
