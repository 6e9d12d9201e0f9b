"""Reading a thread's record: checkpoint trees, field-by-field diffs, one-line summaries, and edits by path.

Pure functions on stored values; the Agent classes do the I/O.
"""

from __future__ import annotations

import bisect
import heapq
import json
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

from agent.errors import BadInput


def counted(n: int, noun: str) -> str:
    """A count with its noun, singular for one: "1 thread", "0 threads", "2 model calls"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def some(names: list[str], most: int) -> str:
    """Names for one line: the first `most` of them, and how many more ("a, b and 598 more")."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


SHORT_ID = 13  # "1f1e71e4-3875": LangGraph ids share a time prefix, and differ from about here on


@dataclass(frozen=True)
class Change:
    """One field that differs between two checkpoints. Paths use 1-based list indices: plan.2 is step 2."""

    path: str
    kind: Literal["added", "removed", "changed"]
    old: Any = None
    new: Any = None


def diff_values(old: Any, new: Any, path: str = "") -> list[Change]:
    """Field by field; lists item by item (so an edited step shows as plan.2 changed, not the whole list)."""
    if old == new:
        # Compared in C: `history` diffs every checkpoint with its parent, and a long run's lists are long.
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[Change] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                changes.append(Change(sub, "added", None, new[key]))
            elif key not in new:
                changes.append(Change(sub, "removed", old[key], None))
            else:
                changes.extend(diff_values(old[key], new[key], sub))
        return changes
    if isinstance(old, list) and isinstance(new, list):
        changes = []
        same = min(len(old), len(new))
        if old[:same] != new[:same]:  # else one extends the other, as a run's lists do: found in C
            same = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
        for index in range(same, max(len(old), len(new))):
            sub = f"{path}.{index + 1}"
            if index >= len(old):
                changes.append(Change(sub, "added", None, new[index]))
            elif index >= len(new):
                changes.append(Change(sub, "removed", old[index], None))
            else:
                changes.extend(diff_values(old[index], new[index], sub))
        return changes
    return [] if old == new else [Change(path, "changed", old, new)]


def _short(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def summarize(node: str, old: dict, new: dict) -> str:
    """What a checkpoint changed, in one line, in the user's words where we know the field."""
    if node == "fork":
        return "replay starts here (a copy of its parent)"
    if not new.get("question"):
        return "run requested"
    if not old.get("question"):
        return f"question: {_short(new['question'], 60)}"
    parts = []
    for change in diff_values(old, new):
        top = change.path.split(".")[0]
        if top in ("usage", "draft"):
            continue  # usage moves every step; the draft repeats the last result
        if node == "analyze" and top in ("plan", "results", "validation"):
            # A new plan clears the old results: say only that.
            part = f"plan: {counted(len(new.get('plan', [])), 'step')}"
        elif top == "results" and change.kind == "added" and "." in change.path:
            part = f"step {change.path.split('.')[1]} → {_short(change.new, 30)}"
        elif top == "validation":
            verdict = new.get("validation") or {}
            part = ("✓ validated" if verdict.get("ok") else "✗ rejected") if verdict else "validation cleared"
        elif change.kind == "removed":
            part = f"{change.path} removed"
        else:
            part = f"{change.path} = {_short(change.new)}"
        if part not in parts:
            parts.append(part)
    return ", ".join(parts) or "no change"


def parse_assignment(text: str) -> tuple[str, Any]:
    """`path=value` from --set; the value is JSON when it parses as JSON, else the plain string."""
    path, sep, raw = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise BadInput(f"--set '{text}' is not path=value (e.g. --set plan.1=\"Multiply 17 by 23\")")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        from graphs.cot import NUMBER_TEXTS

        if path.split(".")[0] in NUMBER_TEXTS:
            value = raw.strip()  # the number as typed, not as Python writes the float JSON made of it
    return path, value


def set_path(values: dict, path: str, value: Any, known: tuple[str, ...]) -> dict:
    """A copy of `values` with `path` set. Lists take 1-based indices; one past the end appends."""
    parts = path.split(".")
    if parts[0] not in known:
        raise BadInput(f"cannot set '{path}': '{parts[0]}' is not a field an edit can set "
                       f"(those are: {', '.join(known)})")
    result = json.loads(json.dumps(values))  # a deep copy that also proves the values are plain data
    target: Any = result
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(target, list):
            if not part.isdigit() or not 1 <= int(part) <= len(target) + 1:
                raise BadInput(f"cannot set '{path}': {'.'.join(parts[:depth]) or 'list'} has "
                               f"{len(target)} items, so '{part}' is not 1..{len(target) + 1}")
            index = int(part) - 1
            if last:
                target[index:index + 1] = [value]
            else:
                target = target[index]
        elif isinstance(target, dict):
            if last:
                target[part] = value
            else:
                target = target.setdefault(part, {})
        else:
            raise BadInput(f"cannot set '{path}': '{'.'.join(parts[:depth])}' is a value, not a list or table")
    return result


def shortest_unique(ids: list[str], minimum: int = SHORT_ID) -> dict[str, str]:
    """Like git: the shortest prefix of each id (at least `minimum` long) that no other id shares."""
    result = {}
    ordered = sorted(ids)
    for i, cid in enumerate(ordered):
        length = minimum
        for neighbour in (ordered[i - 1] if i else "", ordered[i + 1] if i + 1 < len(ordered) else ""):
            common = next((n for n, (a, b) in enumerate(zip(cid, neighbour)) if a != b), min(len(cid), len(neighbour)))
            length = max(length, common + 1)
        result[cid] = cid[:length]
    return result


@dataclass(frozen=True)
class CheckpointInfo:
    """One row of `history`: enough for a script to rebuild the tree from parent links."""

    checkpoint_id: str
    parent_checkpoint_id: str | None
    step: int
    node: str  # the node whose writes made this checkpoint: input, analyze, execute, validate, fork, or edit's node
    source: str  # LangGraph's: input, loop, update, fork
    created_at: str | None
    next: list[str]
    summary: str
    head: bool = False
    branch_of: str | None = None  # set on a thread made by `branch`: "thread@checkpoint" it was copied from
    edit: dict | None = None  # for checkpoints made by `fork --set`: the paths and values that were set

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ThreadInfo:
    """One row of `threads`."""

    thread_id: str
    status: str
    question: str
    answer: str | None
    updated_at: str | None
    checkpoints: int
    branches: int
    head: str
    usage: dict = field(default_factory=dict)
    error: str | None = None  # why a failed run failed, or what a spent budget stopped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Diff:
    """What changed from one checkpoint to another (possibly on another branch or thread)."""

    from_thread: str
    from_checkpoint: str
    to_thread: str
    to_checkpoint: str
    changes: list[Change]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def node_of(snapshot, parent) -> str:
    """Which node wrote a checkpoint, from its metadata and its parent's `next`."""
    meta = snapshot.metadata or {}
    source = meta.get("source", "")
    if source == "input":
        return "input"
    if source == "fork":
        return "fork"
    if source == "update":
        as_node = meta.get("as_node") or ""
        return "input" if as_node in ("__start__", "__input__") else (as_node or "edit")
    if parent is not None and parent.next:
        return ",".join("input" if n == "__start__" else n for n in parent.next)
    return "?"


def checkpoint_info(snapshot, parent, head_id: str) -> CheckpointInfo:
    meta = snapshot.metadata or {}
    node = node_of(snapshot, parent)
    checkpoint_id = snapshot.config["configurable"]["checkpoint_id"]
    parent_id = (snapshot.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    edit = json.loads(meta["edit"]) if isinstance(meta.get("edit"), str) else None
    summary = summarize(node, (parent.values or {}) if parent is not None else {}, snapshot.values or {})
    if parent is None and parent_id:
        node, summary = "?", "the oldest kept: checkpoints before it were pruned"
    if edit:
        summary = "edit: " + ", ".join(f"{k} = {_short(v)}" for k, v in edit.items())
    return CheckpointInfo(
        checkpoint_id=checkpoint_id,
        parent_checkpoint_id=parent_id,
        step=meta.get("step", 0),
        node=node,
        source=meta.get("source", ""),
        created_at=snapshot.created_at,
        next=list(snapshot.next),
        summary=summary,
        head=checkpoint_id == head_id,
        branch_of=meta.get("branch_of"),
        edit=edit,
    )


def history_order(links: dict[str, str | None]) -> list[str]:
    """A thread's checkpoint ids in history order: oldest id first, except that a checkpoint never comes
    before its parent. Timestamps play no part, so checkpoints made in the same instant keep one order.

    LangGraph's ids sort by time only within one process: a replay written on a host whose clock lags can
    get an id below its parent's. So this is a topological order of the parent links that takes, of the
    checkpoints whose parent is already listed (or is not in the thread), the smallest id next; when ids
    agree with the links, as they do within a process, it is simply id order."""
    children: dict[str, list[str]] = defaultdict(list)
    ready = []
    for cid, parent in links.items():
        if parent in links:
            children[parent].append(cid)
        else:
            ready.append(cid)
    heapq.heapify(ready)
    order = []
    while ready:
        cid = heapq.heappop(ready)
        order.append(cid)
        for child in children.pop(cid, ()):
            heapq.heappush(ready, child)
    # Parent links that loop (a damaged database) would hide checkpoints; list them rather than skip them.
    listed = set(order)
    return order + sorted(cid for cid in links if cid not in listed)


class HistoryPage(list):
    """`history` rows (CheckpointInfo) in history order. `next_before` is the checkpoint id to pass as
    `before` for the page of checkpoints listed before these; None when this page starts the history."""

    def __init__(self, rows=(), next_before: str | None = None):
        super().__init__(rows)
        self.next_before = next_before


@dataclass(frozen=True)
class Page:
    """Which checkpoints one page of `history` shows, and how to read them with one range query."""

    ids: list[str]  # in history order
    next_before: str | None  # pass as `before` for the page of checkpoints listed before these; None: no more
    read_before: str | None  # the page's id range, as the saver's list() takes it: ids below read_before...
    read_limit: int  # ...the read_limit highest of them


def history_page(links: dict[str, str | None], limit: int | None = None, before: str | None = None) -> Page:
    """The last `limit` checkpoints (all if None) listed before checkpoint `before` (the end if None).

    Pages follow history_order, so paging back from the end with `next_before` shows every checkpoint
    exactly once, forks and equal timestamps included, and new checkpoints never shift pages already read."""
    order = history_order(links)
    end = order.index(before) if before is not None else len(order)
    start = 0 if limit is None else max(0, end - limit)
    ids = order[start:end]
    if not ids:
        return Page(ids, None, None, 0)
    ordered = sorted(links)
    low, high = bisect.bisect_left(ordered, min(ids)), bisect.bisect_right(ordered, max(ids))
    return Page(ids, ids[0] if start > 0 else None, _after(ordered, high), high - low)


# Checkpoints `history` reads at once: each comes with the thread's whole state, so a page of a long thread is
# read a piece at a time (PageRows keeps only the snapshots a row still needs).
READ_PIECE = 50


class PageRows:
    """A history page's rows, read from the saver a piece at a time: `next_read` says what to read next
    (get_state_history's arguments), `add` takes what came. A snapshot is kept only while a row of the page
    still needs it as the parent its summary compares with: read whole, a page of 2,000 checkpoints of one
    thread took 811 MB, every snapshot holding the whole state."""

    def __init__(self, page: Page, links: dict[str, str | None], config: Callable[[str | None], dict]) -> None:
        self.ids, self.links, self.head, self.config = page.ids, links, max(links), config
        self.shown = set(page.ids)
        self.children: dict[str, set[str]] = {}  # parent -> its children on the page without a row yet
        for cid in page.ids:
            self.children.setdefault(links.get(cid) or "", set()).add(cid)
        self.kept: dict[str, Any] = {}  # snapshots that rows to come compare with
        self.waiting: dict[str, Any] = {}  # snapshots of the page whose parent has not come yet
        self.rows: dict[str, CheckpointInfo] = {}
        self.seen: set[str] = set()
        # the page's id range, as the saver's list() takes it: the `left` highest ids below `before`
        self.before, self.left = (config(page.read_before) if page.read_before else None), page.read_limit

    def next_read(self) -> dict | None:
        """The page's id range, a piece at a time; then one by one the checkpoints it did not bring: parents
        listed earlier than the page, or any written into its range meanwhile by a process whose clock lags
        (few or none); None when nothing is left to read."""
        if self.left > 0:
            return {"config": self.config(None), "before": self.before, "limit": min(self.left, READ_PIECE)}
        wanted = [*self.ids, *(_parent_of(s) for s in self.waiting.values())]
        for cid in sorted({cid for cid in wanted if cid not in self.seen and cid in self.links}):
            self.seen.add(cid)  # asked once: one deleted since the links were read comes back as nothing
            return {"config": self.config(cid), "limit": 1}
        return None

    def add(self, *snapshots) -> None:
        if self.left > 0:  # a piece of the range
            self.left = self.left - len(snapshots) if len(snapshots) == min(self.left, READ_PIECE) else 0
            self.before = snapshots[-1].config if snapshots else None
        for snapshot in snapshots:
            self._add(snapshot)

    def _add(self, snapshot) -> None:
        cid = snapshot.config["configurable"]["checkpoint_id"]
        if cid in self.rows or cid in self.kept or cid in self.waiting:
            return
        self.seen.add(cid)
        if cid in self.shown:
            parent = _parent_of(snapshot)
            if parent in self.links and parent not in self.kept:
                self.waiting[cid] = snapshot
            else:  # read already, or none (the first checkpoint; pruned: "the oldest kept")
                self._row(snapshot, parent)
        for child in [c for c in self.children.get(cid, ()) if c in self.waiting]:
            self._row(self.waiting.pop(child), cid, snapshot)
        if self.children.get(cid):
            self.kept[cid] = snapshot

    def _row(self, snapshot, parent_id: str | None, parent=None) -> None:
        cid = snapshot.config["configurable"]["checkpoint_id"]
        parent = self.kept.get(parent_id, parent) if parent_id else None
        self.rows[cid] = checkpoint_info(snapshot, parent, self.head)
        if (siblings := self.children.get(parent_id or "")) is not None:
            siblings.discard(cid)
            if not siblings:
                self.kept.pop(parent_id or "", None)

    def finish(self) -> list[CheckpointInfo]:
        for snapshot in list(self.waiting.values()):  # the parent is gone: deleted since the links were read
            self._row(snapshot, None)
        return [self.rows[cid] for cid in self.ids if cid in self.rows]


def _parent_of(snapshot) -> str | None:
    return (snapshot.parent_config or {}).get("configurable", {}).get("checkpoint_id")


def _after(ordered: list[str], high: int) -> str | None:
    """The id just above the range read: the next stored one, or for the newest one the next possible uuid,
    so checkpoints written since the links were read stay out of the range."""
    if high < len(ordered):
        return ordered[high]
    try:
        return str(uuid.UUID(int=uuid.UUID(ordered[-1]).int + 1))
    except ValueError:
        return None
