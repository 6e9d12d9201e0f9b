"""Two states side by side, field by field: lists matched item by item (an inserted step shows as one added
row, not as every later step changed), tables key by key, plain values as old | new. Pure; no I/O."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["same", "changed", "added", "removed"]
# The order a person reads a state in; other fields follow alphabetically.
FIELD_ORDER = ("question", "plan", "results", "draft", "answer", "validation", "revisions", "usage")


@dataclass(frozen=True)
class Cell:
    """One line of the side-by-side view: what the left and the right side hold under one label."""

    label: str  # "2" for list item 2 (1-based, as everywhere), a key for tables, "" for plain values
    kind: Kind
    old: Any = None
    new: Any = None
    left_label: str = ""
    right_label: str = ""


@dataclass(frozen=True)
class FieldDiff:
    name: str
    kind: Kind
    cells: list[Cell] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return sum(1 for c in self.cells if c.kind != "same")


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _list_cells(old: list, new: list) -> list[Cell]:
    """Items aligned by content first (difflib), then paired position by position inside each changed block."""
    cells: list[Cell] = []
    matcher = difflib.SequenceMatcher(a=[_key(x) for x in old], b=[_key(x) for x in new], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2)):
                cells.append(Cell(str(j + 1), "same", old[i], new[j], str(i + 1), str(j + 1)))
            continue
        pairs = max(i2 - i1, j2 - j1)
        for offset in range(pairs):
            i, j = i1 + offset, j1 + offset
            has_old, has_new = i < i2, j < j2
            kind: Kind = "changed" if has_old and has_new else ("removed" if has_old else "added")
            cells.append(Cell(str(j + 1) if has_new else str(i + 1), kind, old[i] if has_old else None,
                              new[j] if has_new else None, str(i + 1) if has_old else "",
                              str(j + 1) if has_new else ""))
    return cells


def _table_cells(old: dict, new: dict) -> list[Cell]:
    cells = []
    for key in sorted(set(old) | set(new), key=str):
        if key not in old:
            cells.append(Cell(str(key), "added", None, new[key], "", str(key)))
        elif key not in new:
            cells.append(Cell(str(key), "removed", old[key], None, str(key), ""))
        else:
            cells.append(Cell(str(key), "same" if old[key] == new[key] else "changed", old[key], new[key],
                              str(key), str(key)))
    return cells


def field_diff(name: str, old: Any, new: Any, present: tuple[bool, bool] = (True, True)) -> FieldDiff:
    if not present[0]:
        return FieldDiff(name, "added", [Cell("", "added", None, new)])
    if not present[1]:
        return FieldDiff(name, "removed", [Cell("", "removed", old, None)])
    if isinstance(old, list) and isinstance(new, list):
        cells = _list_cells(old, new)
    elif isinstance(old, dict) and isinstance(new, dict):
        cells = _table_cells(old, new)
    else:
        cells = [Cell("", "same" if old == new else "changed", old, new)]
    kind: Kind = "same" if all(c.kind == "same" for c in cells) else "changed"
    return FieldDiff(name, kind, cells)


def compare(old: dict, new: dict) -> list[FieldDiff]:
    """Every field of either state, in reading order, each with its cells."""
    names = [n for n in FIELD_ORDER if n in old or n in new]
    names += sorted((set(old) | set(new)) - set(names))
    return [field_diff(n, old.get(n), new.get(n), (n in old, n in new)) for n in names]
