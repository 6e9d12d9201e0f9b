"""How our SQLite and Postgres savers keep a thread's storage linear in its steps, for both backends:
small values inline, other values once per channel version, and a list that grew stored as its new items.

A checkpoint holds every channel's value, so storing each checkpoint whole (as the official SQLite saver
does) makes a thread quadratic in its length: a list that gains one item per step is stored again at every
step, in the checkpoint and in the write that extended it. Here:
- None, bools, numbers and short strings stay inline in the checkpoint; they are small.
- Any other value is stored once per channel version, under a key: where it is (Postgres: its version, in
  checkpoint_blobs; SQLite: the id of the checkpoint row that stored it). Later checkpoints refer to it.
- A list value that extends the previous list stored for its channel is stored as a delta: the new items'
  msgpack bytes plus the key of the value it extends. Its base is picked like a Fenwick tree's parent (depth
  d extends depth d - lowbit(d)), so reading any value follows at most log2(depth) bases, and each step
  stores O(log depth) items amortized. A write (a node's output) that extends the list is stored the same
  way against the newest value.
The tips of those chains live in memory per saver (a bounded LRU); a cold cache only means a full copy.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import ormsgpack
from langgraph.checkpoint.base import WRITES_IDX_MAP, writes_sort_key

# The serialized type of a list stored as a delta; its bytes are msgpack [base_key, n_items, new_items].
DELTA = "agent.delta"
MSGPACK = "msgpack"
# Strings up to this many characters stay inline; longer ones are stored once per version.
INLINE_STR_MAX = 256
# A delta is used only when it saves at least this many bytes over the full list (its base costs bytes too).
DELTA_MIN_SAVING = 64
# How many threads' chain tips a saver remembers, and the largest list body it keeps for comparisons.
MAX_THREADS = 512
MAX_TIP_BYTES = 4 << 20
# A list read back this many deltas deep is not extended by the next run: its next value is stored whole.
MAX_SEED_DEPTH = 16


# -- storage options: the savers encode values with the inner serializer (so list deltas compare plain msgpack)
# and seal (compress, encrypt: savers.serde.Serializer) whatever becomes a row or column of its own. In memory
# - decoders, delta bases, tips - a value is always its inner (type, bytes).


def inner_of(serde) -> Any:
    """The serializer that makes plain msgpack (ours wraps one; another saver's serde is its own inner)."""
    return getattr(serde, "inner", serde)


def context(kind: str, *where: Any) -> bytes:
    """Where a sealed value is stored - its kind and row identity - bound to it as associated data, so an
    encrypted value moved to another row (another thread, checkpoint, channel, task) does not decrypt.
    Kinds: checkpoint and metadata (thread, ns, checkpoint id), write (thread, ns, checkpoint id, task id,
    idx), value (thread, ns, channel, key), reply (cache key)."""
    return "\x1f".join(map(str, (kind, *where))).encode()


def seal(serde, type_: str, data: bytes, where: bytes = b"") -> tuple[str, bytes]:
    return serde.seal(type_, data, where) if hasattr(serde, "seal") else (type_, data)


def unseal(serde, type_: str, data: bytes, where: bytes = b"") -> tuple[str, bytes]:
    return serde.unseal(type_, data, where) if hasattr(serde, "unseal") else (type_, data)


def reseal(serde, type_: str, data: bytes, kind: str, source: str, target: str, *where: Any) -> tuple[str, bytes]:
    """A stored value of thread `source` sealed again for the same row of thread `target` (copy_thread)."""
    return seal(serde, *unseal(serde, type_, data, context(kind, source, *where)), context(kind, target, *where))


def dump(serde, value: Any, where: bytes) -> tuple[str, bytes]:
    """A value serialized and sealed for the row `where` names."""
    return seal(serde, *inner_of(serde).dumps_typed(value), where)


def load(serde, type_: str, data: bytes, where: bytes) -> Any:
    """A value stored by dump, for the same row."""
    if hasattr(serde, "load_inner"):
        return serde.load_inner(*serde.unseal(type_, data, where))
    return serde.loads_typed((type_, data))


def encrypted(serde) -> bool:
    return bool(getattr(serde, "encrypted", False))


# Metadata keys the savers, LangGraph and our commands filter and sort on: with encryption on they stay in
# clear; every other key (the record of a `fork --set` edit, a caller's own metadata) is sealed into SEALED.
CLEAR_METADATA = frozenset({"source", "step", "parents", "run_id", "thread_id", "checkpoint_ns", "model", "run",
                            "as_node", "branch_of", "counters_since_delta_snapshot"})
SEALED = "sealed"


def sealing(serde) -> bool:
    """Whether values are compressed or encrypted: then a JSON column holds a sealed text (sealed_text)."""
    return encrypted(serde) or bool(getattr(serde, "compression", None))


def as_text(type_: str, data: bytes) -> str:
    """A stored (type, bytes) as text a JSON or TEXT column can hold: "type:base64"."""
    import base64

    return f"{type_}:{base64.b64encode(data).decode()}"


def from_text(text: str) -> tuple[str, bytes]:
    import base64

    type_, _, data = text.partition(":")
    return type_, base64.b64decode(data)


def sealed_text(serde, value: Any, where: bytes) -> str:
    """A value serialized and sealed, as_text."""
    return as_text(*dump(serde, value, where))


def open_sealed(serde, text: str, where: bytes) -> Any:
    return load(serde, *from_text(text), where)


def seal_metadata(serde, metadata: Mapping[str, Any], where: bytes) -> dict[str, Any]:
    """Metadata as stored: with encryption on, every key outside CLEAR_METADATA sealed into SEALED. Without
    it, metadata is stored as it is - unless a caller's own key is named SEALED: that one is sealed (plain
    serialization), so it is not read back as sealed keys."""
    if not encrypted(serde):
        if SEALED not in metadata:
            return dict(metadata)
        clear = {k: v for k, v in metadata.items() if k != SEALED}
        private = {SEALED: metadata[SEALED]}
    else:
        clear = {k: v for k, v in metadata.items() if k in CLEAR_METADATA}
        private = {k: v for k, v in metadata.items() if k not in CLEAR_METADATA}
    if private:
        clear[SEALED] = sealed_text(serde, private, where)
    return clear


def unseal_metadata(serde, metadata: dict[str, Any], where: bytes) -> dict[str, Any]:
    """Metadata as it was put (the sealed keys restored); a sealed value without the key is an error."""
    sealed = metadata.get(SEALED) if isinstance(metadata, dict) else None
    if not isinstance(sealed, str) or ":" not in sealed:
        return metadata
    rest = {k: v for k, v in metadata.items() if k != SEALED}
    return {**rest, **open_sealed(serde, sealed, where)}


def reseal_metadata(serde, metadata: dict[str, Any], source: bytes, target: bytes) -> dict[str, Any]:
    """Metadata copied to another row (copy_thread): its sealed keys sealed again for the target."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get(SEALED), str):
        return metadata
    return seal_metadata(serde, unseal_metadata(serde, metadata, source), target)


def copy_metadata(serde, metadata: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """copy_thread's `metadata`, checked: it is written into the copied rows as they are stored, so with
    encryption on only keys kept in clear can be (a sealed key's old value would win on read, silently)."""
    if metadata and encrypted(serde) and (sealed := sorted(set(metadata) - CLEAR_METADATA)):
        raise ValueError(f"copy_thread cannot add metadata {sealed} with encryption on: only "
                         f"{sorted(CLEAR_METADATA)} are stored in clear")
    return metadata


def split_filter(serde, filter: Mapping[str, Any] | None) -> tuple[dict | None, dict]:
    """(what SQL can filter on, what must be checked after unsealing the metadata)."""
    if not filter or not encrypted(serde):
        if filter and SEALED in filter:  # a caller's key of that name is stored sealed (seal_metadata)
            return {k: v for k, v in filter.items() if k != SEALED}, {SEALED: filter[SEALED]}
        return (dict(filter) if filter else filter), {}
    return ({k: v for k, v in filter.items() if k in CLEAR_METADATA},
            {k: v for k, v in filter.items() if k not in CLEAR_METADATA})


def matches(metadata: Mapping[str, Any], filter: Mapping[str, Any]) -> bool:
    return all(metadata.get(k) == v for k, v in filter.items())


def is_inline(value: Any) -> bool:
    """Values cheap enough to repeat in every checkpoint, and that JSON (Postgres' jsonb) holds exactly."""
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        # JSON's number is Postgres' numeric: 1e16 comes back an int, -0.0 as 0.0. Written without an exponent
        # (repr) and not -0.0, a float comes back the float it was; others are stored apart, exactly.
        return math.isfinite(value) and "e" not in repr(value) and (value != 0 or math.copysign(1.0, value) > 0)
    return isinstance(value, str) and len(value) <= INLINE_STR_MAX and "\x00" not in value and \
        (value.isascii() or _utf8(value))


def _utf8(text: str) -> bool:
    """Whether text is valid Unicode (a lone surrogate is not: JSON cannot hold it)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def split_values(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inline, stored apart) channel values."""
    inline, apart = {}, {}
    for channel, value in values.items():
        (inline if is_inline(value) else apart)[channel] = value
    return inline, apart


# Version strings as LangGraph's SQL savers make them, f"{n:032}.{random():016}", are most of a checkpoint's
# bytes (two dozen per checkpoint, 50 characters each); stored as [n, random] they are a fifth of that.
_PACKED: dict[str, Any] = {}
_PACKED_MAX = 100_000


def _pack_version(version: Any) -> Any:
    if type(version) is not str:
        return version
    packed = _PACKED.get(version)
    if packed is None:
        packed = version
        if len(version) > 33 and version[32] == "." and version[:32].isdigit():
            n = int(version[:32])
            try:
                tail = float(version[33:])
            except ValueError:
                tail = None
            # Only when it unpacks to the very same string, and JSON holds the number exactly.
            if tail is not None and math.isfinite(tail) and tail > 0 and f"{n:032}.{tail!r}" == version:
                packed = [n, tail]
        if len(_PACKED) >= _PACKED_MAX:
            _PACKED.clear()
        _PACKED[version] = packed
    return packed


def _unpack_version(version: Any) -> Any:
    return f"{version[0]:032}.{version[1]!r}" if type(version) is list else version


def pack_versions(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of a checkpoint with its channel versions packed (unpack_versions restores them)."""
    known = _PACKED.get  # a version packed before (always a non-empty str or list); else _pack_version
    return {**checkpoint,
            "channel_versions": {c: known(v) or _pack_version(v) for c, v in checkpoint["channel_versions"].items()},
            "versions_seen": {node: {c: known(v) or _pack_version(v) for c, v in seen.items()}
                              for node, seen in checkpoint["versions_seen"].items()}}


def unpack_versions(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Restores, in place, the version strings pack_versions packed (others pass through)."""
    checkpoint["channel_versions"] = {c: _unpack_version(v) for c, v in checkpoint["channel_versions"].items()}
    checkpoint["versions_seen"] = {node: {c: _unpack_version(v) for c, v in seen.items()}
                                   for node, seen in checkpoint["versions_seen"].items()}
    return checkpoint


def dump_metadata(metadata: Mapping[str, Any]) -> bytes:
    """Checkpoint metadata as UTF-8 JSON, as the official SQLite saver stores it (orjson: 10x faster)."""
    try:
        return orjson.dumps(metadata, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # lone surrogates (JSON cannot hold them: dropped), ints past 64 bits
        return json.dumps(_valid_text(metadata), ensure_ascii=False).encode()


def _valid_text(value: Any) -> Any:
    """value with lone surrogates dropped from its strings (keys too), for JSON."""
    if isinstance(value, str):
        return value.encode("utf-8", "ignore").decode()
    if isinstance(value, Mapping):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_valid_text(v) for v in value]
    return value


def array_header_size(data: bytes) -> int:
    """Bytes of a msgpack array header (0 if `data` is not a msgpack array)."""
    first = data[0] if data else 0
    if 0x90 <= first <= 0x9F:
        return 1
    return {0xDC: 3, 0xDD: 5}.get(first, 0)


def array_length(data: bytes) -> int:
    """Items in a msgpack array (`data` is one: array_header_size says so)."""
    first = data[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    return int.from_bytes(data[1:3] if first == 0xDC else data[1:5], "big")


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _lowbit(n: int) -> int:
    return n & -n


@dataclass
class _Tip:
    """The newest list stored for one channel: its bytes, and the stored values a next delta may extend."""

    depth: int
    key: str
    n: int
    body: bytes
    # depth -> (key, n_items, body length): the tip's Fenwick ancestors, the only possible bases.
    frames: dict[int, tuple[str, int, int]]

    def extended_by(self, n: int, body: bytes) -> bool:
        return n >= self.n and body.startswith(self.body)


@dataclass
class _Thread:
    tips: dict[str, _Tip] = field(default_factory=dict)
    # (channel, version) -> key of its stored value: a checkpoint that did not change it refers to it.
    known: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class Blob:
    """One value as stored: a serialized type and bytes, and the key of the value a delta extends."""

    type: str
    data: bytes
    base: str | None = None


@dataclass
class Encoded:
    """The values a checkpoint stores, the stored values it refers to, and what to remember after commit."""

    blobs: dict[str, Blob]  # channel -> value to store with this checkpoint
    refs: dict[str, str]  # channel -> key of the value stored earlier, which this checkpoint shares
    tips: dict[str, _Tip]
    known: dict[tuple[str, str], str]


class Chains:
    """Per saver, per thread and namespace: what was stored last, so the next value can be a delta.

    Every method must be called under the saver's lock; remember() only after the rows are committed.
    """

    def __init__(self) -> None:
        self._threads: OrderedDict[tuple[str, str], _Thread] = OrderedDict()
        self._guard = threading.Lock()

    def _thread(self, thread_id: str, ns: str, create: bool = False) -> _Thread | None:
        key = (thread_id, ns)
        with self._guard:
            entry = self._threads.get(key)
            if entry is not None:
                self._threads.move_to_end(key)
            elif create:
                entry = self._threads[key] = _Thread()
                while len(self._threads) > MAX_THREADS:
                    self._threads.popitem(last=False)
            return entry

    def forget(self, thread_ids: Iterable[str] | None = None) -> None:
        """Drop what is remembered about these threads (all threads when None): their rows changed."""
        with self._guard:
            if thread_ids is None:
                self._threads.clear()
                return
            gone = {str(t) for t in thread_ids}
            for key in [k for k in self._threads if k[0] in gone]:
                del self._threads[key]

    # -- writing ---------------------------------------------------------------------------------------

    def encode_checkpoint(self, serde, thread_id: str, ns: str, values: Mapping[str, Any],
                          versions: Mapping[str, Any], new_versions: Mapping[str, Any],
                          *, here: str | None = None, full: bool = False) -> Encoded:
        """What to store for the values of a checkpoint that are kept apart from it.

        A channel whose version is not new refers to its stored value when that is known; other values are
        stored under `here` (or, when None, under their version). `full` stores every value whole (for a
        checkpoint whose older rows are about to be deleted).
        """
        entry = None if full else self._thread(thread_id, ns)
        encoded = Encoded({}, {}, {}, {})
        for channel, value in values.items():
            version = str(versions[channel])
            stored_at = entry.known.get((channel, version)) if entry is not None else None
            if channel not in new_versions and stored_at is not None and stored_at != here:
                encoded.refs[channel] = encoded.known[(channel, version)] = stored_at
                continue
            key = version if here is None else here
            type_, data = serde.dumps_typed(value)
            tip = entry.tips.get(channel) if entry is not None else None
            if tip is not None and here is not None and any(frame[0] == here for frame in tip.frames.values()):
                tip = None  # this checkpoint put again: its value must not extend its own row (stored whole)
            encoded.blobs[channel], new_tip = self._maybe_delta(tip, value, type_, data, key, fenwick=True)
            if new_tip is not None:
                encoded.tips[channel] = new_tip
            encoded.known[(channel, version)] = key
        return encoded

    def encode_writes(self, serde, thread_id: str, ns: str, writes: Iterable[tuple[str, Any]]) -> list[Blob]:
        """A node's writes: each a delta against the channel's newest list when it extends it."""
        tips = entry.tips if (entry := self._thread(thread_id, ns)) is not None else {}
        blobs = []
        for channel, value in writes:
            type_, data = serde.dumps_typed(value)
            blobs.append(self._maybe_delta(tips.get(channel), value, type_, data, None, fenwick=False)[0])
        return blobs

    def _maybe_delta(self, tip: _Tip | None, value: Any, type_: str, data: bytes, key: str | None,
                     *, fenwick: bool) -> tuple[Blob, _Tip | None]:
        """The value as stored (a delta if it extends the tip), and the new tip if it is stored under `key`."""
        if type(value) is not list or type_ != MSGPACK or not (header := array_header_size(data)):
            return Blob(type_, data), None
        n, body = len(value), data[header:]
        if tip is not None and tip.extended_by(n, body):
            depth = tip.depth + 1
            base_depth = depth - _lowbit(depth) if fenwick else tip.depth
            base_key, _, base_len = tip.frames[base_depth] if fenwick else (tip.key, tip.n, len(tip.body))
            suffix = body[base_len:]
            if len(data) - len(suffix) >= DELTA_MIN_SAVING + len(base_key):
                blob = Blob(DELTA, ormsgpack.packb([base_key, n, suffix]), base_key)
                if key is None:
                    return blob, None
                frames = {d: f for d, f in tip.frames.items() if self._in_chain(d, depth)}
                frames[depth] = (key, n, len(body))
                return blob, self._tip(depth, key, n, body, frames)
        if key is None:
            return Blob(type_, data), None
        return Blob(type_, data), self._tip(0, key, n, body, {0: (key, n, len(body))})

    @staticmethod
    def _in_chain(d: int, depth: int) -> bool:
        """Whether depth d is a Fenwick ancestor of `depth` (a base some later delta may extend)."""
        while depth > d:
            depth -= _lowbit(depth)
        return depth == d

    @staticmethod
    def _tip(depth: int, key: str, n: int, body: bytes, frames) -> _Tip | None:
        return _Tip(depth, key, n, bytes(body), frames) if len(body) <= MAX_TIP_BYTES else None

    def remember(self, thread_id: str, ns: str, encoded: Encoded) -> None:
        """After commit: the stored values exist, and the lists just stored are the ones to extend."""
        entry = self._thread(thread_id, ns, create=True)
        entry.known.update(encoded.known)
        for channel in encoded.blobs:
            entry.tips.pop(channel, None)
        entry.tips.update(encoded.tips)

    def seed(self, thread_id: str, ns: str, known: Mapping[tuple[str, str], str],
             lists: Mapping[str, tuple[str, int, bytes]], read: Collection[tuple[str, str]]) -> None:
        """After reading a checkpoint (the parent of the next one, usually): where its values are stored
        - (channel, version) -> key - and its lists, where the next deltas start. `read`: every stored value
        read to decode it, (channel, key), bases included.

        What is remembered may be out of date: another process may have pruned the thread (its head rewritten
        whole under the same key, the values before it gone) or deleted and made it again. A remembered tip
        is kept only if every stored value a next delta could extend was just read, so exists; other tips are
        dropped or replaced by the one read. (Keeping the tip of the value read lets a run in this process go
        on with its delta chain instead of starting one per run.)"""
        entry = self._thread(thread_id, ns, create=True)
        entry.known.update(known)
        for channel, tip in list(entry.tips.items()):
            if not all((channel, key) in read for key, _, _ in tip.frames.values()):
                del entry.tips[channel]
        for channel, (key, n, body) in lists.items():
            tip = entry.tips.get(channel)
            if tip is None or (tip.key, tip.n, tip.body) != (key, n, body):
                entry.tips.pop(channel, None)
                if (new := self._tip(0, key, n, body, {0: (key, n, len(body))})) is not None:
                    entry.tips[channel] = new

    def start(self, thread_id: str, ns: str) -> None:
        """Nothing of this thread and namespace is stored (a get_tuple found no checkpoint, or a put has no
        parent): what is remembered of it is from rows another process has deleted since."""
        with self._guard:
            self._threads.pop((thread_id, ns), None)


def delta_base(type_: str, data: bytes) -> str | None:
    """The key of the value a stored value extends, if it is a delta (to fetch it before decoding)."""
    return str(ormsgpack.unpackb(data)[0]) if type_ == DELTA else None


class MissingBase(LookupError):
    """A delta's base is not in the database: the thread was deleted or pruned while it was written."""


# Items a decoded list may share with the other lists decoded from the same base: they cannot change.
_SHARED_ITEMS = (str, int, float, bool, bytes, type(None))


class Decoder:
    """Turns stored (type, bytes) into values, resolving deltas against `blobs`: (channel, key) ->
    (type, bytes), which must hold every base on the way (the savers fetch them recursively). Everything it
    is given is already unsealed (the inner serializer's bytes).

    One decoder serves the checkpoints of a list() call, so a base several of them extend is decoded once:
    a list whose new items are strings, numbers and the like is its base's items (decoded once, kept) and its
    own, a new list each time; any other list is decoded from its bytes whole (its items must not be shared:
    a caller may change them). Every value of a long thread holds all the items before it, so decoding each
    whole made a list() of N checkpoints cost N^2 item decodes."""

    def __init__(self, serde, blobs: Mapping[tuple[str, str], tuple[str, bytes]]) -> None:
        # Ours refuses types strict mode would not build; another saver's serde loads as it loads.
        self.load = getattr(serde, "load_inner", None) or (lambda type_, data: inner_of(serde).loads_typed((type_, data)))
        self.blobs = blobs
        self._bodies: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._lists: dict[tuple[str, str], list | None] = {}  # decoded lists, None where items are not shared

    def value(self, channel: str, type_: str, data: bytes, key: str | None = None) -> Any:
        """`key`: where the value is stored (None for a write's value), to keep it if other values share it."""
        if type_ == DELTA or (key is not None and type_ == MSGPACK and array_header_size(data)):
            if (items := self._list(channel, key, type_, data)) is not None:
                return list(items)  # the kept list is never handed out
        if type_ != DELTA:
            return self.load(type_, data)
        n, body = self.body(channel, type_, data)
        return self.load(MSGPACK, array_header(n) + body)

    def _list(self, channel: str, key: str | None, type_: str, data: bytes) -> list | None:
        """A stored list, decoded, if every item of it may be shared (_SHARED_ITEMS); else None. Kept under
        its key, so a list that several values extend or refer to is decoded once: a delta then costs its own
        items and a copy of its base's."""
        if key is not None and (channel, key) in self._lists:
            return self._lists[(channel, key)]
        items = None
        if type_ != DELTA:
            whole = self.load(type_, data)
            if type(whole) is list and all(type(item) in _SHARED_ITEMS for item in whole):
                items = whole
        else:
            base, n, suffix = ormsgpack.unpackb(data)
            kept = self._list(channel, str(base), *self._base(channel, base))
            if kept is not None and n >= len(kept):
                added = self.load(MSGPACK, array_header(n - len(kept)) + suffix)
                if type(added) is list and all(type(item) in _SHARED_ITEMS for item in added):
                    items = kept + added
        if key is not None:
            self._lists[(channel, key)] = items
        return items

    def body(self, channel: str, type_: str, data: bytes) -> tuple[int, bytes]:
        """(n_items, concatenated item bytes) of a stored list."""
        if type_ != DELTA:
            return array_length(data), data[array_header_size(data):]
        base, n, suffix = ormsgpack.unpackb(data)
        key = (channel, str(base))
        if key not in self._bodies:
            self._bodies[key] = self.body(channel, *self._base(channel, base))
        return n, self._bodies[key][1] + suffix

    def _base(self, channel: str, base: Any) -> tuple[str, bytes]:
        """The stored value a delta extends."""
        if (stored := self.blobs.get((channel, str(base)))) is None:
            raise MissingBase(f"the stored value of '{channel}' extends {base}, which is gone")
        return stored

    def depth(self, channel: str, type_: str, data: bytes) -> int:
        """How many deltas lead from this stored value to a whole one."""
        hops = 0
        while type_ == DELTA:
            hops += 1
            type_, data = self.blobs[(channel, str(ormsgpack.unpackb(data)[0]))]
        return hops

    def list_tip(self, channel: str, key: str, type_: str, data: bytes) -> tuple[str, int, bytes] | None:
        """(key, n_items, body) if this stored value is a list a later delta could extend. Not when it is
        already MAX_SEED_DEPTH deltas deep: each run (a resume, a fork) starts its Fenwick chain on the value
        it read, so without this the depth would grow with the number of runs; the next value is stored
        whole instead, and reads stay within MAX_SEED_DEPTH + log2(steps of one run) lookups."""
        if type_ == DELTA or (type_ == MSGPACK and array_header_size(data)):
            if self.depth(channel, type_, data) >= MAX_SEED_DEPTH:
                return None
            n, body = self.body(channel, type_, data)
            return key, n, body
        return None


# A task's writes in one row (both backends): msgpack [[channel, type, bytes], ...], each value as the inner
# serializer made it (a delta when it extends a list), the row sealed as a whole; its idx is PACKED_IDX, its
# channel "*". One row and nine parameters instead of one row per channel: put_writes is on every step's path,
# and its cost is CPU (bench/savers.py). Read back as the rows it stands for (idx 0..n-1), by unpack_writes.
PACKED = "agent.writes"
PACKED_IDX = -1000
PACKED_CHANNEL = "*"
# LangGraph's task id for writes made outside a node (input, update_state): it sends them again with new ones
# appended, and each new one must be added by its own idx, so they stay a row each.
NULL_TASK_ID = "00000000-0000-0000-0000-000000000000"


def special(writes) -> bool:
    """Whether any write goes to one of LangGraph's special channels (an error, an interrupt, ...: each has
    its own idx, and a later call replaces it)."""
    return any(channel in WRITES_IDX_MAP for channel, _ in writes)


def packed_write_params(chains, serde, config: Mapping[str, Any], writes, task_id: str,
                        task_path: str) -> list | None:
    """A put_writes' nine parameters for one packed row, or None when its writes stay a row each: a single
    write (nothing to save), the null task, or a special channel (ERROR, INTERRUPT, ...: each has its own idx,
    and a later call replaces it)."""
    if len(writes) < 2 or task_id == NULL_TASK_ID or special(writes):
        return None
    configurable = config["configurable"]
    thread_id, ns = str(configurable["thread_id"]), str(configurable["checkpoint_ns"])
    checkpoint_id = str(configurable["checkpoint_id"])
    entries = [[channel, blob.type, blob.data]
               for (channel, _), blob in zip(writes, chains.encode_writes(inner_of(serde), thread_id, ns, writes))]
    return [thread_id, ns, checkpoint_id, task_id, task_path, PACKED_IDX, PACKED_CHANNEL,
            *seal(serde, PACKED, ormsgpack.packb(entries),
                  context("write", thread_id, ns, checkpoint_id, task_id, PACKED_IDX))]


def unseal_writes(serde, thread_id: str, ns: str, checkpoint_id: str, rows) -> list[tuple]:
    """A checkpoint's stored (task_id, channel, type, value, task_path, idx) writes with their values
    unsealed, a packed row as the writes it stands for."""
    writes = []
    for task_id, channel, type_, value, task_path, idx in rows:
        type_, value = unseal(serde, type_, value, context("write", thread_id, ns, checkpoint_id, task_id, idx))
        if type_ == PACKED:
            writes += unpack_writes(task_id, task_path, value)
        else:
            writes.append((task_id, channel, type_, value, task_path, idx))
    return writes


def unpack_writes(task_id: str, task_path: str, data: bytes) -> list[tuple]:
    """The (task_id, channel, type, value, task_path, idx) writes an unsealed packed row stands for."""
    try:
        entries = ormsgpack.unpackb(data)
        rows = [(task_id, channel, type_, value, task_path, idx)
                for idx, (channel, type_, value) in enumerate(entries)]
    except (ormsgpack.MsgpackDecodeError, TypeError, ValueError):
        rows = None
    if not rows or not all(isinstance(r[1], str) and isinstance(r[2], str) and isinstance(r[3], bytes) for r in rows):
        from savers.errors import StorageError

        raise StorageError(f"the writes of task {task_id} are stored in a form this version does not read: the "
                           "row was altered, or written by other code")
    return rows


WRITE_PARAMS = 9  # write_params' parameters per write it stores


def write_params(chains, serde, config: Mapping[str, Any], writes, task_id: str, task_path: str) -> tuple[list, bool]:
    """The flat parameters of a put_writes for every backend's INSERT (nine per write stored), and whether
    every write goes to a special channel (which decides between upsert and insert-if-absent)."""
    configurable = config["configurable"]
    thread_id, ns = str(configurable["thread_id"]), str(configurable["checkpoint_ns"])
    checkpoint_id = str(configurable["checkpoint_id"])
    params: list = []
    if special := all(channel in WRITES_IDX_MAP for channel, _ in writes):
        # Upserted: a channel given twice is stored once, with its last value, as the official savers' one
        # statement per write store it (one statement cannot change a row twice on Postgres).
        writes = list({channel: (channel, value) for channel, value in writes}.values())
    for idx, ((channel, _), blob) in enumerate(zip(writes, chains.encode_writes(inner_of(serde), thread_id, ns, writes))):
        idx = WRITES_IDX_MAP.get(channel, idx)
        params += (thread_id, ns, checkpoint_id, task_id, task_path, idx, channel,
                   *seal(serde, blob.type, blob.data, context("write", thread_id, ns, checkpoint_id, task_id, idx)))
    return params, special


def next_config(config: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> dict:
    """What put returns: the config that names the checkpoint just stored."""
    configurable = config["configurable"]
    return {"configurable": {"thread_id": configurable["thread_id"], "checkpoint_ns": configurable["checkpoint_ns"],
                             "checkpoint_id": checkpoint["id"]}}


def decode_pending(decoder, writes) -> list[tuple[str, str, Any]]:
    """A checkpoint's pending writes, decoded, in LangGraph's order (rows: task_id, channel, type, value,
    task_path, idx)."""
    return [(task_id, channel, decoder.value(channel, type_, value))
            for task_id, channel, type_, value, _, _ in
            sorted(writes, key=lambda w: writes_sort_key(w[4], w[0], w[5]))]


def unreadable(checkpoint_id: str, thread_id: str, exc: Exception):
    from savers.errors import StorageError

    return StorageError(f"checkpoint {checkpoint_id} of thread '{thread_id}' cannot be read: {exc} "
                        "(the thread was deleted or pruned while a run wrote to it)")
