"""How our SQLite and Postgres savers keep a thread's storage linear in its steps, for both backends:
small values inline, other values once per channel version, and a list that grew stored as its new items.

A checkpoint holds every channel's value, so storing each checkpoint whole (as the official SQLite saver
does) makes a thread quadratic in its length: a list that gains one item per step is stored again at every
step, in the checkpoint and in the write that extended it. Here:
- None, bools, numbers and short strings stay inline in the checkpoint; they are small.
- Any other value is a blob keyed by (thread, namespace, channel, version), written only when the channel's
  version changes (as the official Postgres saver does).
- A list value that extends the previous list stored for its channel is stored as a delta: the new items'
  msgpack bytes plus the version it extends. Its base is picked like a Fenwick tree's parent (depth d
  extends depth d - lowbit(d)), so reading any version follows at most log2(depth) bases, and each step
  stores O(log depth) items amortized. A write (a node's output) that extends the list is stored the same
  way against the newest version.
The tips of those chains live in memory per saver (a bounded LRU); a cold cache only means a full copy.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ormsgpack

# The serialized type of a list stored as a delta; its bytes are msgpack [base_version, n_items, new_items].
DELTA = "agent.delta"
MSGPACK = "msgpack"
# Strings up to this many characters stay inline; longer ones are stored once per version.
INLINE_STR_MAX = 256
# A delta is used only when it saves at least this many bytes over the full list (its base costs bytes too).
DELTA_MIN_SAVING = 64
# How many threads' chain tips a saver remembers, and the largest list body it keeps for comparisons.
MAX_THREADS = 512
MAX_TIP_BYTES = 4 << 20


def is_inline(value: Any) -> bool:
    """Values cheap enough to repeat in every checkpoint, and that JSON (Postgres' jsonb) holds exactly."""
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= INLINE_STR_MAX and "\x00" not in value


def split_values(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inline, stored apart) channel values."""
    inline, apart = {}, {}
    for channel, value in values.items():
        (inline if is_inline(value) else apart)[channel] = value
    return inline, apart


def _header_size(data: bytes) -> int:
    """Bytes of a msgpack array header (0 if `data` is not a msgpack array)."""
    first = data[0] if data else 0
    if 0x90 <= first <= 0x9F:
        return 1
    return {0xDC: 3, 0xDD: 5}.get(first, 0)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _lowbit(n: int) -> int:
    return n & -n


@dataclass
class _Tip:
    """The newest list stored for one channel: its bytes, and the versions a next delta may extend."""

    depth: int
    version: str
    n: int
    body: bytes
    # depth -> (version, n_items, body length): the tip's Fenwick ancestors, the only possible bases.
    frames: dict[int, tuple[str, int, int]]

    def extended_by(self, n: int, body: bytes) -> bool:
        return n >= self.n and body.startswith(self.body)


@dataclass
class _Thread:
    tips: dict[str, _Tip] = field(default_factory=dict)
    # (channel, version) known to be stored as blobs: a checkpoint that did not change them skips them.
    known: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class Blob:
    """One value as stored: a serialized type and bytes, and the version a delta extends (None if full)."""

    type: str
    data: bytes
    base: str | None = None


@dataclass
class Encoded:
    """The blob rows a checkpoint needs written, and what to remember once they are committed."""

    blobs: dict[str, Blob]  # channel -> blob, for this checkpoint's version of the channel
    tips: dict[str, _Tip]
    known: list[tuple[str, str]]


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
                          *, full: bool = False) -> Encoded:
        """Blob rows for the values of a checkpoint that are stored apart.

        A channel whose version is not new is skipped when its blob is known to exist; `full` stores every
        value whole (for a checkpoint whose older rows are about to be deleted).
        """
        entry = None if full else self._thread(thread_id, ns)
        blobs: dict[str, Blob] = {}
        tips: dict[str, _Tip] = {}
        known: list[tuple[str, str]] = []
        for channel, value in values.items():
            version = str(versions[channel])
            key = (channel, version)
            if not full and channel not in new_versions and entry is not None and key in entry.known:
                continue
            type_, data = serde.dumps_typed(value)
            tip = entry.tips.get(channel) if entry is not None else None
            blob, new_tip = self._maybe_delta(tip, value, type_, data, version, fenwick=True)
            blobs[channel] = blob
            if new_tip is not None:
                tips[channel] = new_tip
            known.append(key)
        return Encoded(blobs, tips, known)

    def encode_write(self, serde, thread_id: str, ns: str, channel: str, value: Any) -> Blob:
        """A node's write: a delta against the channel's newest list when it extends it."""
        type_, data = serde.dumps_typed(value)
        entry = self._thread(thread_id, ns)
        tip = entry.tips.get(channel) if entry is not None else None
        blob, _ = self._maybe_delta(tip, value, type_, data, None, fenwick=False)
        return blob

    def _maybe_delta(self, tip: _Tip | None, value: Any, type_: str, data: bytes, version: str | None,
                     *, fenwick: bool) -> tuple[Blob, _Tip | None]:
        if type(value) is not list or type_ != MSGPACK or not (header := _header_size(data)):
            return Blob(type_, data), None
        n, body = len(value), data[header:]
        if tip is not None and tip.extended_by(n, body):
            depth = tip.depth + 1
            base_depth = depth - _lowbit(depth) if fenwick else tip.depth
            base_version, _, base_len = (tip.frames[base_depth] if fenwick else
                                         (tip.version, tip.n, len(tip.body)))
            suffix = body[base_len:]
            if len(data) - len(suffix) >= DELTA_MIN_SAVING + len(base_version):
                blob = Blob(DELTA, ormsgpack.packb([base_version, n, suffix]), base_version)
                if version is None:
                    return blob, None
                frames = {d: f for d, f in tip.frames.items() if self._in_chain(d, depth)}
                frames[depth] = (version, n, len(body))
                return blob, self._tip(depth, version, n, body, frames)
        if version is None:
            return Blob(type_, data), None
        return Blob(type_, data), self._tip(0, version, n, body, {0: (version, n, len(body))})

    @staticmethod
    def _in_chain(d: int, depth: int) -> bool:
        """Whether depth d is a Fenwick ancestor of `depth` (a base some later delta may extend)."""
        while depth > d:
            depth -= _lowbit(depth)
        return depth == d

    @staticmethod
    def _tip(depth: int, version: str, n: int, body: bytes, frames) -> _Tip | None:
        return _Tip(depth, version, n, bytes(body), frames) if len(body) <= MAX_TIP_BYTES else None

    def remember(self, thread_id: str, ns: str, encoded: Encoded) -> None:
        """After commit: the stored blobs exist, and the lists just stored are the ones to extend."""
        entry = self._thread(thread_id, ns, create=True)
        entry.known.update(encoded.known)
        for channel in encoded.blobs:
            entry.tips.pop(channel, None)
        entry.tips.update(encoded.tips)

    def seed(self, thread_id: str, ns: str, stored: Mapping[tuple[str, str], Any],
             lists: Mapping[str, tuple[str, int, bytes]]) -> None:
        """After reading a checkpoint (the parent of the next one, usually): its blobs exist, and its
        lists are where the next deltas start."""
        entry = self._thread(thread_id, ns, create=True)
        entry.known.update(stored)
        for channel, (version, n, body) in lists.items():
            tip = entry.tips.get(channel)
            if tip is None or tip.version != version:
                new = self._tip(0, version, n, body, {0: (version, n, len(body))})
                if new is not None:
                    entry.tips[channel] = new

def delta_base(type_: str, data: bytes) -> str | None:
    """The version a stored value extends, if it is a delta (to fetch it before decoding)."""
    return str(ormsgpack.unpackb(data)[0]) if type_ == DELTA else None


class MissingBase(LookupError):
    """A delta's base is not in the database: the thread was deleted or pruned while it was written."""


class Decoder:
    """Turns stored (type, bytes) into values, resolving deltas against `blobs`: (channel, version) ->
    (type, bytes), which must hold every base on the way (the savers fetch them recursively)."""

    def __init__(self, serde, blobs: Mapping[tuple[str, str], tuple[str, bytes]]) -> None:
        self.serde = serde
        self.blobs = blobs
        self._bodies: dict[tuple[str, str], tuple[int, bytes]] = {}

    def value(self, channel: str, type_: str, data: bytes) -> Any:
        if type_ != DELTA:
            return self.serde.loads_typed((type_, data))
        n, body = self.body(channel, type_, data)
        return self.serde.loads_typed((MSGPACK, _array_header(n) + body))

    def body(self, channel: str, type_: str, data: bytes) -> tuple[int, bytes]:
        """(n_items, concatenated item bytes) of a stored list."""
        if type_ != DELTA:
            return self._count(data), data[_header_size(data):]
        base, n, suffix = ormsgpack.unpackb(data)
        key = (channel, str(base))
        if key not in self._bodies:
            if key not in self.blobs:
                raise MissingBase(f"the stored value of '{channel}' extends version {base}, which is gone")
            self._bodies[key] = self.body(channel, *self.blobs[key])
        return n, self._bodies[key][1] + suffix

    @staticmethod
    def _count(data: bytes) -> int:
        first = data[0]
        if 0x90 <= first <= 0x9F:
            return first & 0x0F
        return int.from_bytes(data[1:3] if first == 0xDC else data[1:5], "big")

    def list_tip(self, channel: str, version: str, type_: str, data: bytes) -> tuple[str, int, bytes] | None:
        """(version, n_items, body) if this stored value is a list a later delta could extend."""
        if type_ == DELTA or (type_ == MSGPACK and _header_size(data)):
            n, body = self.body(channel, type_, data)
            return version, n, body
        return None
