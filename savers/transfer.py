"""Moving threads between databases: a versioned JSON Lines export format, streamed both ways, through the
public saver interface only (so any backend can be source or target), and loaded without trusting it.

Format, one JSON object per line:
  {"format": "agent-export", "version": 2, "exported_at": "..."}                        first line
  {"type": "checkpoint", "thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id",
   "checkpoint": [type, base64], "metadata": {...}, "delta": {...}}                      one per checkpoint
  {"type": "writes", "thread_id", "checkpoint_ns", "checkpoint_id", "task_id",
   "writes": [[channel, type, base64], ...], "extends": [i, ...]}                         a task's pending writes
  {"type": "end", "threads": [...], "checkpoints": n, "writes": n}                        last line
Values are LangGraph's own typed serialization (type tag + bytes, base64), so a round trip is exact.

A thread is listed newest checkpoint first, each checkpoint followed by its writes. Since version 2, a
checkpoint whose parent is the next checkpoint of its thread in the file is written as changes to it:
"delta": {"same": [channels whose version did not change], "extends": {channel: [type, base64 of the items
appended to the parent's list]}}, and its "checkpoint" holds only the other channels' values; and a write
(at position i in "extends") of a list that only appends to its checkpoint's list holds just the items it
appends. A thread of N steps whose lists grow by a step so takes room in N, not N^2 (3,000 steps of
bench/savers.py's graph: 7.8 MB, 585 MB in version 1). Version 1 files (every value whole) are still read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import IO, Any

from savers.compact import MSGPACK, array_header, array_header_size, array_length
from savers.errors import StorageError
from savers.serde import strict_loads

FORMAT, VERSION = "agent-export", 2
READABLE_VERSIONS = (1, 2)
MAX_LINE_BYTES = 64 * 1024 * 1024  # one checkpoint of a very long thread fits; a hostile line does not
CHECKPOINT_KEYS = ("channel_values", "channel_versions", "versions_seen")
ALLOWED_TYPES = {"msgpack", "json", "null", "bytes", "bytearray"}  # never "pickle"
LIST_PAGE = 50  # checkpoints an export reads at once


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


def export_records(saver, threads: Iterable[str], *, skip: Collection[str] = frozenset(),
                   skipped: Callable[[dict], None] = lambda record: None) -> Iterator[dict]:
    """The export of `threads`, record by record (streamed: two checkpoints in memory at a time). The
    checkpoints in `skip` and their writes are left out - handed to `skipped` instead, as they would have
    been written - and no checkpoint that is written refers to them."""
    serde = _dump_serde()
    yield {"format": FORMAT, "version": VERSION, "exported_at": datetime.now(timezone.utc).isoformat()}
    names, counts = [], {"checkpoints": 0, "writes": 0}

    def finish(listed: _Listed, base: _Listed | None) -> Iterator[dict]:
        records = listed.records(serde, base)
        if listed.skip:
            for record in records:
                skipped(record)
            return
        counts["checkpoints"] += 1
        counts["writes"] += sum(len(record["writes"]) for record in records[1:])
        yield from records

    for thread in threads:
        names.append(thread)
        held: _Listed | None = None
        for tup in _listed(saver, thread):
            listed = _Listed.of(thread, tup, skip)
            if held is not None:
                yield from finish(held, listed)
            held = listed
        if held is not None:
            yield from finish(held, None)
    yield {"type": "end", "threads": names, **counts}


def _listed(saver, thread: str) -> Iterator:
    """A thread's checkpoints, newest first, read a page at a time: a saver's list() may read all it lists
    before handing out the first (ours do), and each holds the thread's whole state - all at once, a thread
    of N steps would take memory in N^2 (3,000 steps of bench/savers.py's graph: 1.6 GB)."""
    before, every_namespace = None, {"configurable": {"thread_id": thread}}  # a subgraph's checkpoints too
    while True:
        page = list(saver.list(every_namespace, before=before, limit=LIST_PAGE))
        yield from page
        if len(page) < LIST_PAGE:
            return
        before = page[-1].config


class _Listed:
    """A checkpoint as the saver listed it, held until the next one shows whether it is written as changes
    to that one (its parent, written just after it)."""

    def __init__(self, head: dict, checkpoint: dict, metadata: dict, pending: list, skip: bool) -> None:
        self.head, self.checkpoint, self.metadata, self.pending, self.skip = head, checkpoint, metadata, pending, skip
        self._lists: dict[str, tuple[int, bytes, int] | None] = {}

    @classmethod
    def of(cls, thread: str, tup, skip: Collection[str]) -> _Listed:
        conf = tup.config["configurable"]
        parent = (tup.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        head = {"type": "checkpoint", "thread_id": thread, "checkpoint_ns": conf.get("checkpoint_ns", ""),
                "checkpoint_id": conf["checkpoint_id"], "parent_checkpoint_id": parent}
        return cls(head, tup.checkpoint, dict(tup.metadata or {}), tup.pending_writes or [],
                   conf["checkpoint_id"] in skip)

    def records(self, serde, base: _Listed | None) -> list[dict]:
        """The checkpoint's record, as changes to `base` where it can be, then its writes records."""
        by_task: dict[str, tuple[list, list]] = {}
        for task_id, channel, value in self.pending:
            items, extends = by_task.setdefault(task_id, ([], []))
            kind, data = serde.dumps_typed(value)
            # a list written whole that only appends to the checkpoint's (a node returning the grown list)
            added = _appended(_msgpack_array(kind, data), self.list_bytes(serde, channel)) \
                if isinstance(value, list) else None
            if added is not None:
                extends.append(len(items))
            items.append([channel, "msgpack", _b64(added)] if added is not None else [channel, kind, _b64(data)])
        where = {k: self.head[k] for k in ("thread_id", "checkpoint_ns", "checkpoint_id")}
        writes = [{"type": "writes", **where, "task_id": task_id, "writes": items,
                   **({"extends": extends} if extends else {})} for task_id, (items, extends) in by_task.items()]
        return [self.record(serde, base), *writes]

    def list_bytes(self, serde, channel: str) -> tuple[int, bytes, int] | None:
        """(length, msgpack bytes, where its items start) of a list value, serialized once; None for other
        values."""
        if channel not in self._lists:
            value = self.checkpoint["channel_values"].get(channel)
            self._lists[channel] = _msgpack_array(*serde.dumps_typed(value)) if isinstance(value, list) else None
        return self._lists[channel]

    def record(self, serde, base: _Listed | None) -> dict:
        values = self.checkpoint["channel_values"]
        same, extends = [], {}
        if base is not None and base.head["checkpoint_id"] == self.head["parent_checkpoint_id"] and \
                base.head["checkpoint_ns"] == self.head["checkpoint_ns"] and (self.skip or not base.skip):
            versions, base_versions = self.checkpoint["channel_versions"], base.checkpoint["channel_versions"]
            base_values = base.checkpoint["channel_values"]
            for channel in values:
                if channel not in base_values:
                    continue
                if channel in versions and versions[channel] == base_versions.get(channel):
                    same.append(channel)
                elif (added := _appended(self.list_bytes(serde, channel), base.list_bytes(serde, channel))) is not None:
                    extends[channel] = ["msgpack", _b64(added)]
        record = {**self.head, "checkpoint": _typed(serde, {**self.checkpoint, "channel_values": {
            c: v for c, v in values.items() if c not in extends and c not in same}}), "metadata": self.metadata}
        if same or extends:
            record["delta"] = {"same": same, "extends": extends}
        return record


def _msgpack_array(kind: str, data: bytes) -> tuple[int, bytes, int] | None:
    """(length, data, offset of the first item) of a msgpack array - a list as LangGraph's serializer writes
    it: a header, then each item's bytes, one after another."""
    if kind != MSGPACK or not (start := array_header_size(data)):
        return None
    return array_length(data), data, start


def _appended(longer: tuple[int, bytes, int] | None, shorter: tuple[int, bytes, int] | None) -> bytes | None:
    """The msgpack array of the items `longer` adds to `shorter`, if `shorter`'s items are its first ones,
    byte for byte (msgpack items delimit themselves, so a byte prefix is an item prefix); else None."""
    if longer is None or shorter is None or longer[0] < shorter[0]:
        return None
    (n, data, start), (m, prefix, at) = longer, shorter
    if not data.startswith(memoryview(prefix)[at:], start):
        return None
    return array_header(n - m) + data[start + len(prefix) - at:]


def json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_export(records: Iterable[dict], out: IO[str]) -> dict:
    """Write records as JSON lines; returns the closing record (the counts)."""
    last: dict = {}
    for record in records:
        out.write(json_line(record))
        last = record
    out.flush()
    return last


# -- reading an export, without trusting it ------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint record. One written as changes to its parent (`same`, `extends`: the format's "delta")
    holds only its other channels' values in `checkpoint` until Restorer puts it."""

    thread_id: str
    ns: str
    checkpoint_id: str
    parent_id: str | None
    checkpoint: dict
    metadata: dict
    same: tuple[str, ...] = ()
    extends: dict[str, list] = field(default_factory=dict)


@dataclass(frozen=True)
class Writes:
    """A writes record; the writes at `extends` hold what they append to their checkpoint's list."""

    thread_id: str
    ns: str
    checkpoint_id: str
    task_id: str
    writes: list[tuple[str, Any]]
    extends: tuple[int, ...] = ()


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
    seen_end, count, bases = False, 0, _Bases()
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
            if record.get("version") not in READABLE_VERSIONS:
                raise _fail(number, f"export version {record.get('version')!r}; this agent reads versions "
                                    f"{' and '.join(map(str, READABLE_VERSIONS))}")
            continue
        kind = record.get("type")
        if kind in ("checkpoint", "writes"):
            parsed = parse_record(serde, record, number)
            count += isinstance(parsed, Checkpoint)
            bases.check(parsed, number)
            yield parsed
        elif kind == "end":
            bases.check_none_left()
            if record.get("checkpoints") != count:
                raise _fail(number, f"the end record counts {record.get('checkpoints')} checkpoints, the file "
                                    f"holds {count}")
            seen_end = True
            yield record
        else:
            raise _fail(number, f"unknown record type {kind!r}")
    if not seen_end:
        raise ImportError_("the file ends before its end record (cut short?); nothing was imported")


class _Bases:
    """Checks, reading a file in its order, that every checkpoint written as changes to its parent is followed
    in its thread by that parent, holding what it takes: each channel it keeps ("same") and a list for each
    it extends - or, kept or extended there, by the parent's own parent, and so on; and that writes which
    append to their checkpoint's lists follow that checkpoint, which has those lists."""

    def __init__(self) -> None:
        # thread -> (namespace, id of the checkpoint that must come next, line of the one that names it,
        # {channel: (must be a list, line of the record that takes it)})
        self.wanted: dict[str, tuple[str, str, int, dict[str, tuple[bool, int]]]] = {}
        # thread -> the shape of its checkpoint read last (its channels, an empty list for each list): a whole
        # state per thread of a version 1 file would be held otherwise
        self.last: dict[str, Checkpoint] = {}

    def check(self, record: Checkpoint | Writes, number: int) -> None:
        if isinstance(record, Writes):
            if record.extends:
                self._check_writes(record, number)
            return
        carried: dict[str, tuple[bool, int]] = {}
        if (wanted := self.wanted.pop(record.thread_id, None)) is not None:
            ns, base, line, channels = wanted
            if (record.ns, record.checkpoint_id) != (ns, base):
                raise _fail(line, f"the checkpoint is written as changes to checkpoint {base}, which does not "
                                  "come next in its thread")
            for channel, (must_be_list, taker) in channels.items():
                if self._holds(record, channel, must_be_list, number, f"line {taker}"):
                    carried[channel] = (must_be_list, taker)
        needs = {**{c: carried.get(c, (False, number)) for c in record.same},
                 **dict.fromkeys(record.extends, (True, number))}
        if needs:
            self.wanted[record.thread_id] = (record.ns, record.parent_id, number, needs)
        shape = {c: [] if isinstance(v, list) else None for c, v in record.checkpoint["channel_values"].items()}
        self.last[record.thread_id] = replace(record, checkpoint={"channel_values": shape}, metadata={},
                                              extends=dict.fromkeys(record.extends, []))

    def _check_writes(self, record: Writes, number: int) -> None:
        checkpoint = self.last.get(record.thread_id)
        if checkpoint is None or (checkpoint.ns, checkpoint.checkpoint_id) != (record.ns, record.checkpoint_id):
            raise _fail(number, "the writes append to their checkpoint's lists, but do not follow it")
        for i in record.extends:
            channel = record.writes[i][0]
            if self._holds(checkpoint, channel, True, number, f"line {number}"):
                wanted = self.wanted[record.thread_id][3]  # the checkpoint keeps it from its parent, to come
                wanted[channel] = (True, number)

    @staticmethod
    def _holds(record: Checkpoint, channel: str, must_be_list: bool, number: int, taker: str) -> bool:
        """Whether `record` holds `channel` (a list, if it must be), refusing the file if it does not; True
        when it keeps it from its own parent, which must then hold it."""
        values = record.checkpoint["channel_values"]
        if channel in values:
            if must_be_list and not isinstance(values[channel], list):
                raise _fail(number, f"'{channel}' of checkpoint {record.checkpoint_id} is not a list, and {taker} "
                                    "appends to it")
            return False
        if channel in record.extends:
            return False
        if channel in record.same:
            return True
        raise _fail(number, f"checkpoint {record.checkpoint_id} has no '{channel}', which {taker} takes from it")

    def check_none_left(self) -> None:
        for _, base, line, _ in self.wanted.values():
            raise _fail(line, f"the checkpoint is written as changes to checkpoint {base}, which the file does "
                              "not hold after it")


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
        parent = _str(record, "parent_checkpoint_id", number, optional=True)
        same, extends = _delta(serde, record, number, parent, checkpoint["channel_values"])
        # Our graph's state is plain data; anything else in it was put there by hand.
        if not _plain(checkpoint["channel_values"]) or not _plain(list(extends.values())):
            raise _fail(number, "the checkpoint holds values that are not plain data")
        if not isinstance(metadata, dict) or not _plain(metadata):
            raise _fail(number, "metadata must be a JSON object of plain values")
        return Checkpoint(_str(record, "thread_id", number), _ns(record, number), cid, parent, checkpoint, metadata,
                          same, extends)
    items = record.get("writes")
    if not isinstance(items, list):
        raise _fail(number, "'writes' must be a list")
    writes = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise _fail(number, "each write must be [channel, type, base64]")
        writes.append((item[0], _decode(serde, item[1:], number, f"write to '{item[0]}'")))
    extends = record.get("extends", [])
    if not (isinstance(extends, list) and all(type(i) is int and 0 <= i < len(writes) for i in extends)
            and len(set(extends)) == len(extends)):
        raise _fail(number, "'extends' must list positions of its writes, each once")
    if any(not isinstance(writes[i][1], list) for i in extends):
        raise _fail(number, "a write that appends to a list is not a list")
    return Writes(_str(record, "thread_id", number), _ns(record, number),
                  _str(record, "checkpoint_id", number), _str(record, "task_id", number), writes, tuple(extends))


def _delta(serde, record: dict, number: int, parent: str | None, values: dict) -> tuple[tuple[str, ...], dict]:
    """The channels a checkpoint record keeps from its parent, and the items it appends to the parent's lists."""
    delta = record.get("delta")
    if delta is None:
        return (), {}
    same, extends = (delta.get("same", []), delta.get("extends", {})) if isinstance(delta, dict) else (None, None)
    if not (isinstance(same, list) and all(isinstance(c, str) for c in same) and isinstance(extends, dict)
            and set(delta) <= {"same", "extends"}):
        raise _fail(number, "'delta' must be {\"same\": [channel, ...], \"extends\": {channel: [type, base64]}}")
    if parent is None:
        raise _fail(number, "the checkpoint is written as changes to its parent, but names none")
    if overlap := sorted((set(same) & set(extends)) | ((set(same) | set(extends)) & set(values))):
        raise _fail(number, f"'{overlap[0]}' is given twice in the checkpoint")
    added = {}
    for channel, typed in extends.items():
        added[channel] = _decode(serde, typed, number, f"what is appended to '{channel}'")
        if not isinstance(added[channel], list):
            raise _fail(number, f"what is appended to '{channel}' is not a list")
    return tuple(same), added


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
        # thread -> (namespace, id, channel values) of the checkpoint put last: the base of one written as
        # changes to it, which the file holds just after it (read_export checks that), so puts just before
        self._last: dict[str, tuple[str, str, dict]] = {}

    def put(self, record: Checkpoint | Writes) -> None:
        thread = self.rename(record.thread_id)
        if isinstance(record, Writes):
            writes = record.writes
            if record.extends:
                values = self._base(record.thread_id, record.ns, record.checkpoint_id, "writes of")
                writes = [(c, [*values[c], *v]) if i in record.extends else (c, v) for i, (c, v) in enumerate(writes)]
            self.saver.put_writes(_config(thread, record.ns, record.checkpoint_id), writes, record.task_id)
            return
        checkpoint = self._whole(record)
        versions = dict(checkpoint.get("channel_versions", {}))
        parent = self._versions.get((thread, record.ns, record.parent_id)) if record.parent_id else None
        new = versions if parent is None else {c: v for c, v in versions.items() if parent.get(c) != v}
        self.saver.put(_config(thread, record.ns, record.parent_id), checkpoint, record.metadata, new)
        self._last[record.thread_id] = (record.ns, record.checkpoint_id, checkpoint["channel_values"])
        self._versions[(thread, record.ns, record.checkpoint_id)] = versions
        if len(self._versions) > self.PARENTS:
            self._versions.popitem(last=False)

    def _whole(self, record: Checkpoint) -> dict:
        if not record.same and not record.extends:
            return record.checkpoint
        values = self._base(record.thread_id, record.ns, record.parent_id, "changes to")
        whole = {**record.checkpoint["channel_values"], **{c: values[c] for c in record.same}}
        whole.update((c, [*values[c], *added]) for c, added in record.extends.items())
        return {**record.checkpoint, "channel_values": whole}

    def _base(self, thread: str, ns: str, checkpoint_id: str | None, what: str) -> dict:
        """The channel values of the checkpoint put last in `thread`, which must be `checkpoint_id`."""
        last_ns, last_id, values = self._last.get(thread, (None, None, {}))
        if (last_ns, last_id) != (ns, checkpoint_id):
            raise ImportError_(f"{what} checkpoint {checkpoint_id} of thread {thread} come before it is written")
        return values
