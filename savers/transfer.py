"""Moving threads between databases: a versioned JSON Lines export format, streamed both ways, through the
public saver interface only (so any backend can be source or target), and loaded without trusting it.

Format, one JSON object per line:
  {"format": "agent-export", "version": 1, "exported_at": "..."}                        first line
  {"type": "checkpoint", "thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id",
   "checkpoint": [type, base64], "metadata": {...}}                                       one per checkpoint
  {"type": "writes", "thread_id", "checkpoint_ns", "checkpoint_id", "task_id",
   "writes": [[channel, type, base64], ...]}                                              a task's pending writes
  {"type": "end", "threads": [...], "checkpoints": n, "writes": n}                        last line
Values are LangGraph's own typed serialization (type tag + bytes, base64), so a round trip is exact.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

from savers.errors import StorageError
from savers.serde import strict_loads

FORMAT, VERSION = "agent-export", 1
MAX_LINE_BYTES = 64 * 1024 * 1024  # one checkpoint of a very long thread fits; a hostile line does not
CHECKPOINT_KEYS = ("channel_values", "channel_versions", "versions_seen")
ALLOWED_TYPES = {"msgpack", "json", "null", "bytes", "bytearray"}  # never "pickle"


class ImportError_(StorageError):
    """The file is not a valid export; nothing was imported."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _typed(serde, value: Any) -> list[str]:
    kind, data = serde.dumps_typed(value)
    return [kind, _b64(data)]


def _config(thread: str, ns: str = "", checkpoint_id: str | None = None) -> dict:
    configurable = {"thread_id": thread, "checkpoint_ns": ns}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _dump_serde():
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer()


def _load_serde():
    # Strict: only LangGraph's safe built-in types are rebuilt; an unknown type is never imported or run.
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer(allowed_msgpack_modules=None)


def export_records(saver, threads: Iterable[str]) -> Iterator[dict]:
    """The export of `threads`, record by record (constant memory: one checkpoint at a time)."""
    serde = _dump_serde()
    yield {"format": FORMAT, "version": VERSION, "exported_at": datetime.now(timezone.utc).isoformat()}
    names, checkpoints, writes = [], 0, 0
    for thread in threads:
        names.append(thread)
        for tup in saver.list(_config(thread)):
            conf = tup.config["configurable"]
            parent = (tup.parent_config or {}).get("configurable", {}).get("checkpoint_id")
            yield {"type": "checkpoint", "thread_id": thread, "checkpoint_ns": conf.get("checkpoint_ns", ""),
                   "checkpoint_id": conf["checkpoint_id"], "parent_checkpoint_id": parent,
                   "checkpoint": _typed(serde, tup.checkpoint), "metadata": dict(tup.metadata or {})}
            checkpoints += 1
            by_task: dict[str, list] = {}
            for task_id, channel, value in tup.pending_writes or []:
                by_task.setdefault(task_id, []).append([channel, *_typed(serde, value)])
            for task_id, items in by_task.items():
                yield {"type": "writes", "thread_id": thread, "checkpoint_ns": conf.get("checkpoint_ns", ""),
                       "checkpoint_id": conf["checkpoint_id"], "task_id": task_id, "writes": items}
                writes += len(items)
    yield {"type": "end", "threads": names, "checkpoints": checkpoints, "writes": writes}


def write_export(records: Iterable[dict], out: IO[str]) -> dict:
    """Write records as JSON lines; returns the closing record (the counts)."""
    last: dict = {}
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        last = record
    out.flush()
    return last


# -- reading an export, without trusting it ------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    thread_id: str
    ns: str
    checkpoint_id: str
    parent_id: str | None
    checkpoint: dict
    metadata: dict


@dataclass(frozen=True)
class Writes:
    thread_id: str
    ns: str
    checkpoint_id: str
    task_id: str
    writes: list[tuple[str, Any]]


def _fail(line: int, why: str) -> ImportError_:
    return ImportError_(f"line {line}: {why}; nothing was imported")


def _str(record: dict, key: str, line: int, optional: bool = False) -> str | None:
    value = record.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not value and key not in ("checkpoint_ns",)):
        raise _fail(line, f"'{key}' must be a non-empty string")
    return value


def _decode(serde, typed: Any, line: int, what: str) -> Any:
    if not (isinstance(typed, list) and len(typed) == 2 and all(isinstance(x, str) for x in typed)):
        raise _fail(line, f"{what} is not a [type, base64] pair")
    kind, data = typed
    if kind not in ALLOWED_TYPES:
        raise _fail(line, f"{what} has type '{kind}', which is never loaded")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(line, f"{what} is not valid base64") from None
    try:
        value, blocked = strict_loads(serde, kind, raw)
    except Exception as exc:  # any decoding fault of a hostile value: refuse the file
        raise _fail(line, f"{what} cannot be decoded ({type(exc).__name__})") from None
    if blocked:
        raise _fail(line, f"{what} names types that are never loaded ({', '.join(sorted(set(blocked)))})")
    return value


def _plain(value: Any) -> bool:
    """Only data: dicts with string keys, lists, strings, numbers, booleans, None."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def read_export(lines: Iterable[bytes | str]) -> Iterator[Checkpoint | Writes | dict]:
    """Parse and check an export line by line; raises ImportError_ naming the first bad line."""
    serde = _load_serde()
    seen_end, count = False, 0
    for number, raw in enumerate(lines, 1):
        if len(raw) > MAX_LINE_BYTES:
            raise _fail(number, f"longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB")
        if seen_end:
            if raw.strip():
                raise _fail(number, "data after the end record")
            continue
        record = _json(raw, number)
        if number == 1:
            if record.get("format") != FORMAT:
                raise _fail(number, f"not an {FORMAT} file")
            if record.get("version") != VERSION:
                raise _fail(number, f"export version {record.get('version')!r}; this agent reads version {VERSION}")
            continue
        kind = record.get("type")
        if kind in ("checkpoint", "writes"):
            parsed = parse_record(serde, record, number)
            count += isinstance(parsed, Checkpoint)
            yield parsed
        elif kind == "end":
            if record.get("checkpoints") != count:
                raise _fail(number, f"the end record counts {record.get('checkpoints')} checkpoints, the file "
                                    f"holds {count}")
            seen_end = True
            yield record
        else:
            raise _fail(number, f"unknown record type {kind!r}")
    if not seen_end:
        raise ImportError_("the file ends before its end record (cut short?); nothing was imported")


def _json(raw: bytes | str, number: int) -> dict:
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(number, f"not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(record, dict):
        raise _fail(number, "not a JSON object")
    return record


def record_reader() -> Callable[[bytes | str, int], Checkpoint | Writes]:
    """Reads one checkpoint or writes line of an export read before (read_export) again by itself."""
    serde = _load_serde()

    def read(raw: bytes | str, number: int) -> Checkpoint | Writes:
        record = _json(raw, number)
        if record.get("type") not in ("checkpoint", "writes"):
            raise _fail(number, "not a checkpoint or writes record")
        return parse_record(serde, record, number)

    return read


def parse_record(serde, record: dict, number: int) -> Checkpoint | Writes:
    """A checkpoint or writes record, checked (a hostile file is refused, never loaded)."""
    if record.get("type") == "checkpoint":
        checkpoint = _decode(serde, record.get("checkpoint"), number, "checkpoint")
        metadata = record.get("metadata")
        cid = _str(record, "checkpoint_id", number)
        if not isinstance(checkpoint, dict) or checkpoint.get("id") != cid:
            raise _fail(number, "the checkpoint does not match its checkpoint_id")
        missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint.get(key), dict)]
        if missing:
            raise _fail(number, f"the checkpoint has no {', '.join(missing)}")
        # Our graph's state is plain data; anything else in it was put there by hand.
        if not _plain(checkpoint["channel_values"]):
            raise _fail(number, "the checkpoint holds values that are not plain data")
        if not isinstance(metadata, dict) or not _plain(metadata):
            raise _fail(number, "metadata must be a JSON object of plain values")
        return Checkpoint(_str(record, "thread_id", number), _ns(record, number), cid,
                          _str(record, "parent_checkpoint_id", number, optional=True), checkpoint, metadata)
    items = record.get("writes")
    if not isinstance(items, list):
        raise _fail(number, "'writes' must be a list")
    writes = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise _fail(number, "each write must be [channel, type, base64]")
        writes.append((item[0], _decode(serde, item[1:], number, f"write to '{item[0]}'")))
    return Writes(_str(record, "thread_id", number), _ns(record, number),
                  _str(record, "checkpoint_id", number), _str(record, "task_id", number), writes)


def _ns(record: dict, line: int) -> str:
    ns = record.get("checkpoint_ns", "")
    if not isinstance(ns, str):
        raise _fail(line, "'checkpoint_ns' must be a string")
    return ns


# -- writing into a database ---------------------------------------------------------------------------------


class Restorer:
    """Puts an export's records into a saver, through its public interface.

    Each checkpoint's new channel versions are those that differ from its parent's, as LangGraph's own loop
    passes them: a value is stored where it changed, and referred to after - and on our savers a list that
    grows by a step is stored as that step's delta (savers/compact.py). Fed oldest first (lifecycle.import_file
    does), an imported thread so takes the room the original did; newest first (an export's own order) each
    list is stored whole, and a thread of N steps takes room in N^2 (3,000 steps of bench/savers.py's graph:
    34.7 MB instead of 3.9 MB).
    A checkpoint whose parent was not put just before (newest first, a trimmed parent, a fork from far back:
    PARENTS are remembered) counts every channel as new, so backends that store values apart (Postgres
    blobs) have them all.
    """

    PARENTS = 256

    def __init__(self, saver, rename: Callable[[str], str]) -> None:
        self.saver, self.rename = saver, rename
        self._versions: OrderedDict[tuple[str, str, str], dict] = OrderedDict()

    def put(self, record: Checkpoint | Writes) -> None:
        thread = self.rename(record.thread_id)
        if isinstance(record, Writes):
            self.saver.put_writes(_config(thread, record.ns, record.checkpoint_id), record.writes, record.task_id)
            return
        versions = dict(record.checkpoint.get("channel_versions", {}))
        parent = self._versions.get((thread, record.ns, record.parent_id)) if record.parent_id else None
        new = versions if parent is None else {c: v for c, v in versions.items() if parent.get(c) != v}
        self.saver.put(_config(thread, record.ns, record.parent_id), record.checkpoint, record.metadata, new)
        self._versions[(thread, record.ns, record.checkpoint_id)] = versions
        if len(self._versions) > self.PARENTS:
            self._versions.popitem(last=False)
