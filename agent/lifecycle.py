"""Backing up, moving and removing threads: export, import, migrate, delete.

Imports are all or nothing: the whole file is read and checked before anything is written, and a write that
fails part-way is undone. Overwriting a thread goes through a staging copy, so the old one is never lost.
"""

from __future__ import annotations

import os
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from agent.errors import BadInput, StorageError, ThreadExists, ThreadNotFound
from agent.history import some


@dataclass(frozen=True)
class TransferReport:
    """What an export, import or migrate moved."""

    threads: list[str] = field(default_factory=list)
    checkpoints: int = 0
    writes: int = 0
    renamed: dict[str, str] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _line(f: IO[bytes]) -> bytes:
    """The next line of a binary file, read no further than one byte past MAX_LINE_BYTES (a longer line comes
    back over-long, to be refused); b"" at the end."""
    from savers.transfer import MAX_LINE_BYTES

    return f.readline(MAX_LINE_BYTES + 1)


def parse_renames(pairs: list[str]) -> dict[str, str]:
    renames: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise BadInput(f"--rename '{pair}' is not OLD=NEW (e.g. --rename t1=t1-restored)")
        renames[old.strip()] = new.strip()
    return renames


SQLITE_HEADER = b"SQLite format 3\x00"


def refuse_overwriting(path, database: str | None = None) -> None:
    """An output file (export, batch results) that is a directory, or a SQLite database or one of its
    -wal/-shm/-journal files - the open database itself, typed for the output by mistake - is refused:
    the export would replace it, the results be appended into it. `database`: the SQLite file the command
    opens, which may not exist yet (a first `batch` makes it)."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"cannot write {path}: it is a directory")
    base = path
    for suffix in ("-wal", "-shm", "-journal"):
        if path.name.endswith(suffix):
            base = path.with_name(path.name[:-len(suffix)])
    what = "a SQLite database" if base == path else f"a file of the SQLite database {base}"
    refusal = BadInput(f"{path} is {what}: writing there would destroy it (choose another file)")
    if database is not None and os.path.abspath(base) == os.path.abspath(database):
        raise refusal
    try:
        if not stat.S_ISREG(os.stat(base).st_mode):  # a pipe, a device: nothing to read a header from
            return
        with open(base, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError:
        return
    if header == SQLITE_HEADER:
        raise refusal


@contextmanager
def output_file(path: Path | None, stdout: IO[str]) -> Iterator[IO[str]]:
    """Where an export goes: a file written whole or not at all (temp file, then rename), or stdout."""
    if path is None:
        yield stdout
        return
    refuse_overwriting(path)
    directory = path.resolve().parent
    if not directory.is_dir():
        raise BadInput(f"cannot write {path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_threads(threads: Any) -> None:
    """Thread ids as the Python API takes them: None (every thread) or a list of texts (a lone string would be
    read letter by letter, and an empty one taken for None)."""
    if threads is not None and (not isinstance(threads, (list, tuple, set, frozenset))
                                or not all(isinstance(t, str) for t in threads)):
        raise BadInput(f"threads must be a list of thread ids (e.g. ['t1']), not {threads!r:.60}")


def export_threads(saver, threads: list[str], out: IO[str], counts: dict[str, int],
                   on_checkpoint: Callable[[int], None] | None = None) -> TransferReport:
    """`counts`: the database's threads and their checkpoints (savers.catalog's rows: the root namespace).
    `on_checkpoint(total)` is called as each of those is written (a progress bar; a subgraph's own
    checkpoints are written too, uncounted)."""
    from savers.transfer import export_records, write_export

    if not callable(getattr(out, "write", None)):
        raise BadInput(f"export writes to a file open for text (e.g. open('backup.jsonl', 'w')), not {out!r:.60}")
    missing = [t for t in threads if t not in counts]
    if missing:
        raise ThreadNotFound(f"no thread {', '.join(repr(t) for t in missing)} in this database (see `threads`)")
    total = sum(counts[t] for t in threads)

    def counted(records: Iterator[dict]) -> Iterator[dict]:
        for record in records:
            yield record
            if record.get("type") == "checkpoint" and not record["checkpoint_ns"]:
                if on_checkpoint is not None:
                    on_checkpoint(total)

    end = write_export(counted(export_records(saver, threads)), out)
    return TransferReport(threads=end["threads"], checkpoints=end["checkpoints"], writes=end["writes"])


def _placed_lines(f, sealed) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) of an export file; of a staging file sealed by `sealed` (a saver's serde), opened."""
    from savers.transfer import MAX_LINE_BYTES

    while line := _line(f):
        yield f.tell() - len(line), _opened(line, sealed)
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            return


def _opened(line: bytes, sealed) -> bytes:
    import base64

    from savers.transfer import MAX_LINE_BYTES

    if sealed is None or len(line) > MAX_LINE_BYTES:
        return line
    type_, _, data = line.strip().partition(b":")
    return sealed.unseal(type_.decode(), base64.b64decode(data))[1]


def _seal_line(sealed, line: str) -> str:
    import base64

    type_, data = sealed.seal("line", line.encode())
    return f"{type_}:{base64.b64encode(data).decode()}\n"


# Where each thread's records are in an export file, checkpoint by checkpoint in file order (newest first):
# thread -> [(checkpoint id, [offset, line number, offset, line number, ...]), ...] - the checkpoint's line,
# then the lines of its writes.
Index = dict[str, list[tuple[str, list[int]]]]


def _scan(path: Path, sealed=None) -> tuple[set[str], int, int, Index]:
    """First pass over a file: check every line, find which threads it holds and where their records are."""
    from savers.transfer import Checkpoint, ImportError_, read_export

    threads, checkpoints, writes, index, at = set(), 0, 0, {}, [0, 0]

    def lines(f):
        for at[0], line in _placed_lines(f, sealed):
            at[1] += 1
            yield line

    try:
        with path.open("rb") as f:
            for record in read_export(lines(f)):
                if isinstance(record, dict):
                    continue
                groups = index.setdefault(record.thread_id, [])
                if isinstance(record, Checkpoint) or not groups or groups[-1][0] != record.checkpoint_id:
                    groups.append((record.checkpoint_id, []))
                groups[-1][1].extend(at)
                if isinstance(record, Checkpoint):
                    threads.add(record.thread_id)
                    checkpoints += 1
                else:
                    writes += len(record.writes)
    except ImportError_ as exc:
        raise BadInput(f"{path.name}: {exc}") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    return threads, checkpoints, writes, index


def _write(saver, path: Path, names: dict[str, str], index: Index, sealed=None,
           on_checkpoint: Callable[[], None] | None = None, begun: list[str] | None = None) -> None:
    """Second pass: write the records of the threads in `names`, each under its name there, oldest checkpoint
    first (an export lists them newest first): so each is put after its parent, with only the channels that
    changed as new, and an imported thread takes the room the original did (transfer.Restorer). `begun`
    gets each name as its writing starts: what a clean-up has to remove, and nothing else."""
    from savers.threads import revive
    from savers.transfer import Checkpoint, Restorer, record_reader

    for name in names.values():
        revive(saver, name)  # a thread restored under the id of a deleted one is no late write
    restorer, read_record = Restorer(saver, names.__getitem__), record_reader()
    with path.open("rb") as f:
        for thread in names:
            if begun is not None:
                begun.append(names[thread])
            for _, places in reversed(index.get(thread, [])):
                for offset, number in zip(places[::2], places[1::2]):
                    f.seek(offset)
                    line = _opened(_line(f), sealed)
                    record = read_record(line, number)
                    restorer.put(record)
                    if on_checkpoint is not None and isinstance(record, Checkpoint):
                        on_checkpoint()


def import_file(saver, path: Path, renames: dict[str, str], overwrite: bool,
                exists: Callable[[str], bool], delete: Callable[[str], None], sealed=None,
                on_checkpoint: Callable[[int], None] | None = None) -> TransferReport:
    """`sealed`: the serde that sealed each line (a staging file of prune on an encrypted database).
    `on_checkpoint(total)` is called as each checkpoint is written, once the file is checked (a progress bar:
    `total` is how many it holds)."""
    if not isinstance(renames, dict) or not all(isinstance(name, str) and name.strip()
                                                for pair in renames.items() for name in pair):
        raise BadInput(f"renames must be a dict of old -> new thread id (texts), not {renames!r:.60}")
    threads, checkpoints, writes, index = _scan(path, sealed)
    unknown = sorted(set(renames) - threads)
    if unknown:
        raise BadInput(f"--rename names {', '.join(unknown)}, which {path.name} does not hold "
                       f"(it holds {', '.join(sorted(threads))})")
    targets = {t: renames.get(t, t) for t in threads}
    taken = sorted(t for t in targets.values() if exists(t))
    if taken and not overwrite:
        raise ThreadExists(f"{_threads(taken)} already {_exist(taken)}: import with --rename OLD=NEW, or "
                           "--overwrite to replace it")
    # A thread to replace is first imported beside it; only a complete copy takes its place.
    staging = {t: (f"{target}~import-{uuid.uuid4().hex[:8]}" if target in taken else target)
               for t, target in targets.items()}
    begun: list[str] = []
    try:
        _write(saver, path, staging, index, sealed, on_checkpoint and (lambda: on_checkpoint(checkpoints)), begun)
    except BaseException as exc:  # Ctrl+C too: all or nothing, and only its own (not a thread made meanwhile)
        for name in begun:
            delete(name)
        if not isinstance(exc, Exception):
            raise
        raise StorageError(f"import of {path.name} failed while writing ({type(exc).__name__}: {exc}); "
                           "what was written is removed, nothing changed") from None
    # Every copy is whole: now each replaces its thread. Ctrl+C here is held off until all are replaced (a
    # swap cut short is done again from its start), then raised, saying so: stopping at once left a thread
    # half-written beside its staging copy (prune, which trims through this, showed both).
    interrupted = False
    for source, target in targets.items():
        if staging[source] != target:
            try:
                _swap(saver, path, source, target, staging[source], index, sealed, delete)
            except KeyboardInterrupt:
                interrupted = True
                try:
                    _swap(saver, path, source, target, staging[source], index, sealed, delete)
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(f"stopped again while replacing threads: thread {target!r} may be "
                                            f"incomplete, its whole copy is thread {staging[source]!r}") from None
    if interrupted:
        raise KeyboardInterrupt("the import had reached its last stage, and finished it: every thread was replaced")
    return TransferReport(threads=sorted(targets.values()), checkpoints=checkpoints, writes=writes,
                          renamed={k: v for k, v in renames.items()}, replaced=taken)


def _swap(saver, path: Path, source: str, target: str, copy: str, index, sealed, delete) -> None:
    """Thread `target` replaced by the file's thread `source`, whose whole copy is thread `copy`."""
    delete(target)
    _write(saver, path, {source: target}, index, sealed)  # should this fail, the staging copy stays, whole
    delete(copy)


def _threads(names: list[str]) -> str:
    """Thread names for a message: the first five, and how many more."""
    return f"thread{'s' if len(names) > 1 else ''} {some([repr(t) for t in names], 5)}"


def _exist(names: list[str]) -> str:
    return "exists" if len(names) == 1 else "exist"


def migrate(source, target, threads: list[str], counts: dict[str, int], exists: Callable[[str], bool],
            delete: Callable[[str], None], on_checkpoint: Callable[[int], None] | None = None) -> TransferReport:
    """Copy threads from one database to another, checked as an import is; all or nothing. Each thread goes
    through a staging file in the system's temporary directory (sealed line by line when the source is
    encrypted, as trim's), so that it is written oldest checkpoint first and takes the room it took in the
    source (transfer.Restorer); one thread at a time, so the staging file is one thread's export. `counts`
    and `on_checkpoint(total)` as export_threads takes them."""
    from savers.compact import encrypted
    from savers.transfer import export_records, json_line

    missing = [t for t in threads if t not in counts]
    if missing:
        raise ThreadNotFound(f"no thread {', '.join(repr(t) for t in missing)} in the source database (see "
                             "`threads`)")
    total = sum(counts[t] for t in threads)
    taken = sorted(t for t in threads if exists(t))
    if taken:
        raise ThreadExists(f"{_threads(taken)} already {_exist(taken)} in the target database; delete "
                           f"{'it' if len(taken) == 1 else 'them'} there first, or export and import with --rename")
    sealed = source.serde if encrypted(getattr(source, "serde", None)) else None
    checkpoints = writes = 0
    begun: list[str] = []  # what the target may hold of this migration (no other thread is touched)
    try:
        with tempfile.TemporaryDirectory(prefix="agent-migrate-") as workdir:
            path = Path(workdir) / "thread.jsonl"
            for thread in threads:
                with path.open("w", encoding="utf-8") as f:
                    for record in export_records(source, [thread]):
                        line = json_line(record)
                        f.write(line if sealed is None else _seal_line(sealed, line))
                _, counted, written, index = _scan(path, sealed)
                _write(target, path, {thread: thread}, index, sealed, on_checkpoint and (lambda: on_checkpoint(total)), begun)
                checkpoints, writes = checkpoints + counted, writes + written
    except BaseException as exc:  # Ctrl+C too: all or nothing
        for thread in begun:
            delete(thread)
        if not isinstance(exc, Exception):
            raise
        raise StorageError(f"migration failed ({type(exc).__name__}: {exc}); the target is as it was") from None
    return TransferReport(threads=list(threads), checkpoints=checkpoints, writes=writes)


# -- retention -----------------------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str, flag: str = "--older-than") -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds. `flag`: what the error names the text as ("" for nothing)."""
    value, unit = text.strip()[:-1], text.strip()[-1:].lower()
    given = f"{flag} '{text}'" if flag else f"'{text}'"
    try:
        seconds = float(value) * _UNITS[unit]
    except (KeyError, ValueError):
        raise BadInput(f"{given} is not an age like 30d, 12h, 90m, 45s or 2w") from None
    if seconds < 0:
        raise BadInput(f"{given} is negative")
    return seconds


@dataclass(frozen=True)
class RetentionPolicy:
    """What `prune` keeps: on every branch, the newest `keep` checkpoints of the lineage that leads to its
    head (always at least the head, which is what resume and `show` need); with `older_than`, also every
    checkpoint younger than that; with `keep_completed`, finished threads whole."""

    keep: int = 10
    older_than_s: float | None = None
    keep_completed: bool = False


def checkpoints_to_remove(rows: list, policy: RetentionPolicy, now: float) -> list[str]:
    """Ids of a thread's checkpoints (history rows, oldest first) that the policy lets go, oldest first."""
    from datetime import datetime

    by_id = {row.checkpoint_id: row for row in rows}
    parents = {row.parent_checkpoint_id for row in rows}
    keep: set[str] = set()
    for head in (row for row in rows if row.checkpoint_id not in parents):
        current, taken = head, 0
        while current is not None and taken < max(policy.keep, 1):
            keep.add(current.checkpoint_id)
            taken += 1
            current = by_id.get(current.parent_checkpoint_id)
    if policy.older_than_s is not None:
        for row in rows:
            created = datetime.fromisoformat(row.created_at).timestamp() if row.created_at else now
            if now - created < policy.older_than_s:
                keep.add(row.checkpoint_id)
    return [row.checkpoint_id for row in rows if row.checkpoint_id not in keep]


@dataclass(frozen=True)
class PruneReport:
    dry_run: bool
    removed: dict[str, int] = field(default_factory=dict)  # thread -> checkpoints removed (or that would be)
    checkpoints: int = 0
    bytes_freed: int = 0  # their size in the export format; the database file shrinks by about as much
    file_bytes_before: int | None = None  # SQLite only: the file and its WAL (savers.catalog.file_bytes)
    file_bytes_after: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trim_thread(saver, thread: str, remove: set[str], workdir: Path, exists: Callable[[str], bool],
                delete: Callable[[str], None], dry_run: bool) -> int:
    """Replace a thread by a copy without the `remove` checkpoints (and their writes); returns the bytes
    they take in the export format. With `dry_run`, only measures.

    Through the export format and an overwriting import, so it works on every backend and the thread is
    replaced only once the trimmed copy is whole."""
    from savers.compact import encrypted
    from savers.transfer import export_records, json_line

    # On an encrypted database the staging copy is encrypted too, line by line: nothing reaches the disk
    # in plaintext.
    sealed = saver.serde if encrypted(getattr(saver, "serde", None)) else None
    freed = 0

    def measure(record: dict) -> None:
        nonlocal freed
        freed += len(json_line(record).encode())

    path = workdir / f"prune-{uuid.uuid4().hex}.jsonl"
    try:
        with path.open("w", encoding="utf-8") as f:
            for record in export_records(saver, [thread], skip=remove, skipped=measure):
                if not dry_run:
                    line = json_line(record)
                    f.write(line if sealed is None else _seal_line(sealed, line))
        if not dry_run:
            import_file(saver, path, {}, True, exists, delete, sealed)
    finally:
        path.unlink(missing_ok=True)
    return freed
