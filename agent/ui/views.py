"""What the templates show, worked out from a thread's record: spend per step and per branch, what an edit
will run again, and the graph's view settings as they travel in URLs. Pure; no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from agent.history import CheckpointInfo
from agent.ui.lanes import Graph, Line, default_collapsed, layout

USAGE_KEYS = ("llm_calls", "input_tokens", "output_tokens", "cached_calls", "cost_usd")
NODES = ("input", "analyze", "execute", "validate", "fork")
KINDS = {"": "all checkpoints", "edits": "edits", "replays": "replay starts", "failed": "failed steps",
         "ends": "run ends", "branches": "branch points"}


def usage_of(values: dict | None) -> dict:
    return dict((values or {}).get("usage") or {})


def spent(new: dict, old: dict | None = None) -> dict:
    """What was spent from `old` to `new` (both cumulative usage tables); cost only where it is recorded."""
    old = old or {}
    delta = {k: new.get(k, 0) - old.get(k, 0) for k in USAGE_KEYS if k != "cost_usd"}
    if "cost_usd" in new:
        delta["cost_usd"] = round(new.get("cost_usd", 0.0) - old.get("cost_usd", 0.0), 10)
    return delta


@dataclass(frozen=True)
class BranchSpend:
    """A branch's own spend, and what its origin spent from the same checkpoint on."""

    line: Line
    own: dict
    origin: dict | None  # None for the main line
    origin_end: str | None


def branch_spend(graph_lines: list[Line], usage: dict[str, dict], checkpoint_id: str) -> BranchSpend | None:
    """`usage`: each checkpoint's usage so far (Record.usage)."""
    line = next((ln for ln in graph_lines if any(r.checkpoint_id == checkpoint_id for r in ln.rows)), None)
    if line is None:
        return None
    start = usage.get(line.parent, {}) if line.parent else {}
    own = spent(usage.get(line.rows[-1].checkpoint_id, {}), start)
    if line.parent is None:
        return BranchSpend(line, own, None, None)
    origin = next((ln for ln in graph_lines if any(r.checkpoint_id == line.parent for r in ln.rows)), None)
    if origin is None:
        return BranchSpend(line, own, None, None)
    end = origin.rows[-1].checkpoint_id
    return BranchSpend(line, own, spent(usage.get(end, {}), start), end)


def will_run(nxt: list[str], values: dict) -> list[str]:
    """In a person's words, the nodes a run from this state will carry out, as far as they can be known."""
    plan, results = values.get("plan") or [], values.get("results") or []
    if not nxt:
        return []
    node = nxt[0]
    if node in ("__start__", "input"):
        return ["input: the run starts over from the question", "analyze: a new plan", "execute: every step",
                "validate"]
    if node == "analyze":
        return ["analyze: a new plan", "execute: every step of it", "validate"]
    if node == "execute":
        steps = [f"execute step {n}: {plan[n - 1]}" for n in range(len(results) + 1, len(plan) + 1)]
        return steps + ["validate"]
    return [node]


@dataclass(frozen=True)
class GraphView:
    """How the graph is shown: filters, collapsed branches, unfolded runs. Travels in the query string."""

    thread: str
    selected: str = ""
    node: str = ""
    kind: str = ""
    q: str = ""
    fold: bool = True
    shut: tuple[str, ...] = ()  # branches collapsed by hand
    opened: tuple[str, ...] = ()  # branches opened by hand (when many start collapsed)
    unfold: tuple[str, ...] = ()  # folded runs opened by hand
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_query(cls, params) -> GraphView:
        def ids(name: str) -> tuple[str, ...]:
            return tuple(x for x in params.get(name, "").split(",") if x)

        return cls(params.get("t", ""), params.get("c", ""), params.get("node", ""), params.get("kind", ""),
                   params.get("q", ""), params.get("fold", "1") != "0", ids("shut"), ids("opened"), ids("unfold"))

    def query(self, **changes: Any) -> str:
        view = replace(self, **changes)
        params = {"t": view.thread, "c": view.selected, "node": view.node, "kind": view.kind, "q": view.q,
                  "fold": "" if view.fold else "0", "shut": ",".join(view.shut), "opened": ",".join(view.opened),
                  "unfold": ",".join(view.unfold)}
        return urlencode({k: v for k, v in params.items() if v})

    def __getitem__(self, name: str):
        return getattr(self, name)

    def opening(self, keys: list[str]) -> str:
        """The query with these branches shown."""
        return self.query(opened=tuple(dict.fromkeys((*self.opened, *keys))),
                          shut=tuple(k for k in self.shut if k not in keys))

    def closing(self, key: str) -> str:
        """The query with this branch collapsed."""
        return self.query(opened=tuple(k for k in self.opened if k != key), shut=tuple(dict.fromkeys((*self.shut, key))))

    def toggled(self, name: str, key: str) -> str:
        current = getattr(self, name)
        return self.query(**{name: tuple(x for x in current if x != key) if key in current else (*current, key)})


def matcher(view: GraphView, found: frozenset[str], errors: dict[str, str], branch_points: set[str]):
    """Which rows the graph shows. `found`: the checkpoints whose state holds the search text (Store.search)."""
    needle = view.q.strip().lower()

    def show(row: CheckpointInfo) -> bool:
        if view.node and row.node != view.node:
            return False
        if view.kind == "edits" and row.source != "update":
            return False
        if view.kind == "replays" and row.source != "fork":
            return False
        if view.kind == "failed" and row.checkpoint_id not in errors:
            return False
        if view.kind == "ends" and row.next:
            return False
        if view.kind == "branches" and row.checkpoint_id not in branch_points:
            return False
        return not needle or row.checkpoint_id in found or needle in row.summary.lower()

    return show


def build_graph(view: GraphView, rows: list[CheckpointInfo], found: frozenset[str], errors: dict[str, str],
                head: str) -> Graph:
    keep = {head, view.selected} - {""}
    from agent.ui.lanes import split_lines

    lines = split_lines(rows)
    collapsed = (default_collapsed(lines, keep) - set(view.opened)) | set(view.shut)
    branch_points = {line.parent for line in lines if line.parent}
    return layout(rows, show=matcher(view, found, errors, branch_points), collapsed=collapsed,
                  unfolded=set(view.unfold), keep=keep, fold=view.fold)
