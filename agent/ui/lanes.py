"""A thread's checkpoints as a git-style graph: lines of checkpoints, one lane each, branches off their parent.

Pure layout from `history` rows (parent links); the page draws what this returns. Knows nothing of HTTP.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.history import CheckpointInfo

# How a branch started, from the source of its first checkpoint (the CLI's tree uses the same words).
BRANCH_KIND = {"fork": "replay", "update": "edit", "input": "new run"}
# A run of this many checkpoints of one node, in one line, with nothing else to see, is folded into one row.
FOLD_MIN = 6
# Past this many branches, branches start collapsed (except the ones holding the head or the selection).
COLLAPSE_OVER = 8


@dataclass
class Line:
    """A chain of checkpoints read top to bottom: the main line, or a branch off an earlier checkpoint."""

    number: int  # 0 for the main line; colours are picked by it
    rows: list[CheckpointInfo]
    parent: str | None  # the checkpoint this line branches off (None for the main line)
    kind: str  # main, replay, edit, new run, branch
    lane: int = -1

    @property
    def key(self) -> str:
        return self.rows[0].checkpoint_id


@dataclass
class Item:
    """One drawn row: a checkpoint, or a fold standing for a run of them."""

    y: int
    line: Line
    rows: list[CheckpointInfo]  # one checkpoint, or the folded run
    folded: bool = False
    collapsed: list[Line] = field(default_factory=list)  # branches off this checkpoint that are hidden

    @property
    def row(self) -> CheckpointInfo:
        return self.rows[0]

    @property
    def lane(self) -> int:
        return self.line.lane

    @property
    def key(self) -> str:
        return self.rows[0].checkpoint_id


@dataclass(frozen=True)
class Edge:
    """A link from an item to the item of its parent checkpoint; `skipped` when filtered rows lie between."""

    parent: Item
    child: Item
    skipped: bool


@dataclass
class Graph:
    items: list[Item]
    edges: list[Edge]
    lanes: int
    lines: list[Line]
    hidden: int  # checkpoints not shown because of a filter or a collapsed branch

    def item_of(self, checkpoint_id: str) -> Item | None:
        return next((item for item in self.items if any(r.checkpoint_id == checkpoint_id for r in item.rows)), None)


def split_lines(rows: list[CheckpointInfo]) -> list[Line]:
    """The lines of a thread in display order: a line, then (depth first) the branches off each of its rows.

    The oldest child of a checkpoint continues its line, as in the CLI's tree; the others start branches.
    """
    known = {r.checkpoint_id for r in rows}
    children: dict[str | None, list[CheckpointInfo]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.checkpoint_id):
        children[row.parent_checkpoint_id if row.parent_checkpoint_id in known else None].append(row)
    lines: list[Line] = []

    def walk(start: CheckpointInfo, parent: str | None, kind: str) -> None:
        line = Line(len(lines), [], parent, kind)
        lines.append(line)
        current: CheckpointInfo | None = start
        others: list[CheckpointInfo] = []
        while current is not None:
            line.rows.append(current)
            first, *rest = children.get(current.checkpoint_id) or [None]
            others.extend(rest)
            current = first
        for other in others:
            walk(other, other.parent_checkpoint_id, BRANCH_KIND.get(other.source, "branch"))

    for number, root in enumerate(children[None]):
        walk(root, None, "main" if number == 0 else "branch")
    return lines


def default_collapsed(lines: list[Line], keep: Iterable[str]) -> set[str]:
    """Which branches start collapsed: all of them when there are many, except those leading to `keep`."""
    branches = [line for line in lines if line.parent is not None]
    if len(branches) <= COLLAPSE_OVER:
        return set()
    wanted = set(keep)
    by_id = {r.checkpoint_id: line for line in lines for r in line.rows}
    open_lines: set[str] = set()
    for checkpoint in wanted:
        line = by_id.get(checkpoint)
        while line is not None and line.parent is not None:
            open_lines.add(line.key)
            line = by_id.get(line.parent)
    return {line.key for line in branches if line.key not in open_lines}


def layout(rows: list[CheckpointInfo], *, show: Callable[[CheckpointInfo], bool] = lambda row: True,
           collapsed: set[str] = frozenset(), unfolded: set[str] = frozenset(), keep: Iterable[str] = (),
           fold: bool = True) -> Graph:
    """Items, edges and lanes for the page.

    `show` filters checkpoints (hidden ones leave a dashed edge); branches whose first checkpoint id is in
    `collapsed` are hidden and counted on their parent's row; runs of FOLD_MIN or more checkpoints of one
    node fold into one item unless their first id is in `unfolded` or `fold` is off. Checkpoints in `keep`
    (the head, the selection) are never folded away.
    """
    lines = split_lines(rows)
    keep = set(keep)
    by_key = {line.key: line for line in lines}
    parent_of = {r.checkpoint_id: r.parent_checkpoint_id for r in rows}
    branches_at: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        if line.parent is not None:
            branches_at[line.parent].append(line)

    hidden_lines: set[str] = set()
    for line in lines:  # depth first: a branch's parent line is decided before it
        parent_line = next((other for other in lines if line.parent in {r.checkpoint_id for r in other.rows}), None)
        if line.key in collapsed or (parent_line is not None and parent_line.key in hidden_lines):
            hidden_lines.add(line.key)

    items: list[Item] = []
    item_of: dict[str, Item] = {}
    hidden = 0

    def place(line: Line) -> None:
        nonlocal hidden
        run: list[CheckpointInfo] = []

        def flush() -> None:
            if not run:
                return
            if fold and len(run) >= FOLD_MIN and run[0].checkpoint_id not in unfolded:
                emit(run[:1], folded=False)
                emit(run[1:-1], folded=True)
                emit(run[-1:], folded=False)
            else:
                for r in run:
                    emit([r], folded=False)
            run.clear()

        def emit(group: list[CheckpointInfo], folded: bool) -> None:
            item = Item(len(items), line, list(group), folded)
            items.append(item)
            for r in group:
                item_of[r.checkpoint_id] = item
            if not folded:
                for branch in branches_at.get(item.key, []):
                    if branch.key in hidden_lines:
                        item.collapsed.append(branch)
                    else:
                        place(branch)

        for r in line.rows:
            if not show(r):
                hidden += 1
                # Branches off a checkpoint the filter hides still show, where it would have been.
                shown = [b for b in branches_at.get(r.checkpoint_id, []) if b.key not in hidden_lines]
                if shown:
                    flush()
                    for branch in shown:
                        place(branch)
                continue
            plain = (r.source == "loop" and not r.head and r.checkpoint_id not in keep
                     and not branches_at.get(r.checkpoint_id))
            if plain and (not run or run[-1].node == r.node):
                run.append(r)
                continue
            flush()
            if plain:
                run.append(r)
            else:
                emit([r], folded=False)
        flush()

    for line in lines:
        if line.parent is None:
            place(line)
    for key in hidden_lines:
        hidden += len(by_key[key].rows)

    edges = []
    for item in items:
        parent, skipped = parent_of.get(item.rows[0].checkpoint_id), False
        while parent is not None and (parent not in item_of or item_of[parent] is item):
            parent, skipped = parent_of.get(parent), True
        if parent is not None:
            edges.append(Edge(item_of[parent], item, skipped))
    lanes = _assign_lanes(items, edges)
    return Graph(items, edges, lanes, lines, hidden)


def _assign_lanes(items: list[Item], edges: list[Edge]) -> int:
    """Each shown line takes the lowest lane free from the row it branches off to its last row."""
    span: dict[int, list[int]] = {}
    for item in items:
        low, high = span.setdefault(item.line.number, [item.y, item.y])
        span[item.line.number] = [min(low, item.y), max(high, item.y)]
    for edge in edges:
        if edge.parent.line is not edge.child.line:
            number = edge.child.line.number
            span[number][0] = min(span[number][0], edge.parent.y)
    ends: list[int] = []  # per lane: the last row it is taken up to
    lines = {item.line.number: item.line for item in items}
    for number, (start, end) in sorted(span.items(), key=lambda kv: (kv[1][0], kv[0])):
        lane = next((i for i, taken in enumerate(ends) if taken < start), len(ends))
        if lane == len(ends):
            ends.append(end)
        else:
            ends[lane] = end
        lines[number].lane = lane
    return max(len(ends), 1)
