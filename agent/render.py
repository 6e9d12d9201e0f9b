"""How the CLI shows a thread's record to a person: tables, the history tree, a state, a diff.

Rich renders colour on a terminal and plain text when piped; `--json` output does not come through here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from agent.history import CheckpointInfo, counted, shortest_unique

EMPTY = "—"


def _when(created_at: str | None) -> str:
    return created_at[:19].replace("T", " ") if created_at else EMPTY


def _text(value: Any, width: int | None = None) -> str:
    if value is None or value == "":
        return EMPTY
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    return escape(text)


def dollars(amount: float) -> str:
    """Spend as people read it: cents for most runs, more digits for the tiny sums of cheap models."""
    return f"${amount:.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.6f}"


STATUS_STYLE = {"done": "green", "interrupted": "yellow", "failed": "red", "running": "cyan",
                "budget_exceeded": "magenta"}


def threads_table(threads, *, limited: bool = False) -> Table:
    """`limited`: a --limit cut the list short (there may be more threads)."""
    title = f"the {counted(len(threads), 'thread')} updated last" if limited else counted(len(threads), "thread")
    table = Table(title=title, title_justify="left", expand=False)
    numbers = ("checkpoints", "branches", "model calls", "spend")
    for column in ("thread", "status", "question", "answer", *numbers, "updated"):
        table.add_column(column, no_wrap=column not in ("question", "answer"), min_width=8,
                         justify="right" if column in numbers else "left")
    # A long thread id folds over lines (whole, to be copied) instead of squeezing the other columns to nothing.
    table.columns[0].no_wrap, table.columns[0].overflow, table.columns[0].max_width = False, "fold", 40
    for t in threads:
        style = STATUS_STYLE.get(t.status, "")
        calls = t.usage.get("llm_calls", 0)
        cached = t.usage.get("cached_calls", 0)
        table.add_row(escape(t.thread_id), f"[{style}]{t.status}[/]", _text(t.question, 50), _text(t.answer, 20),
                      str(t.checkpoints), str(t.branches), f"{calls}" + (f" (+{cached} cached)" if cached else ""),
                      dollars(t.usage.get("cost_usd", 0.0)), _when(t.updated_at))
    return table


def _next(nodes: list[str]) -> str:
    return ", ".join("input" if n == "__start__" else n for n in nodes)


BRANCH_KIND = {"fork": "replay", "update": "edit", "input": "new run"}


def _label(row: CheckpointInfo, short: dict[str, str]) -> str:
    head = " [bold magenta]← head[/]" if row.head else ""
    nxt = f" [dim]next: {_next(row.next)}[/]" if row.next else ""
    source = f"[dim]{row.source}[/]" if row.source == "loop" else f"[yellow]{row.source}[/]"
    return (f"[cyan]{short[row.checkpoint_id]}[/] [dim]step {row.step:>2}[/] [bold]{row.node:<9}[/] "
            f"{source} [dim]{_when(row.created_at)}[/]  {escape(row.summary)}{nxt}{head}")


def history_tree(thread: str, rows: list[CheckpointInfo]) -> Tree:
    """Git-style: each line of checkpoints reads top to bottom; replays, edits and other runs that start
    from an earlier checkpoint hang under it as branches. The oldest child continues the line."""
    short = shortest_unique([r.checkpoint_id for r in rows])
    children: dict[str | None, list[CheckpointInfo]] = defaultdict(list)
    known = {r.checkpoint_id for r in rows}
    for row in rows:
        parent = row.parent_checkpoint_id if row.parent_checkpoint_id in known else None
        children[parent].append(row)
    origin = next((r.branch_of for r in rows if r.branch_of), None)
    title = f"[bold]thread {escape(thread)}[/]" + (f" [dim](branched from {escape(origin)})[/]" if origin else "")
    tree = Tree(title, guide_style="dim")

    def add_line(container: Tree, start: CheckpointInfo) -> None:
        current: CheckpointInfo | None = start
        while current is not None:
            node = container.add(_label(current, short))
            first, *others = sorted(children.get(current.checkpoint_id, []), key=lambda r: r.checkpoint_id) or [None]
            for other in others:
                kind = BRANCH_KIND.get(other.source, "branch")
                add_line(node.add(f"[yellow]⑂ {kind} from {short[current.checkpoint_id]}[/]"), other)
            current = first

    for root in sorted(children[None], key=lambda r: r.checkpoint_id):
        add_line(tree, root)
    return tree


def state_lines(view) -> list[str]:
    info, result = view.checkpoint, view.result
    values = view.values
    lines = [
        f"[bold]thread {escape(view.thread_id)}[/] · checkpoint [cyan]{info.checkpoint_id}[/]",
        f"step {info.step} · written by [bold]{info.node}[/] ({info.source}) · {_when(info.created_at)}"
        + (f" · parent {info.parent_checkpoint_id[:13]}" if info.parent_checkpoint_id else ""),
        "",
        f"[bold]Question:[/] {_text(values.get('question'))}",
        "[bold]Plan:[/]" if result.steps else f"[bold]Plan:[/] {EMPTY}",
    ]
    for number, step in enumerate(result.steps, 1):
        mark = "[green]✓[/]" if step.result is not None else " "
        outcome = f" [bold]→ {escape(step.result)}[/]" if step.result is not None else ""
        lines.append(f"  {mark} {number}. {escape(step.description)}{outcome}")
    validation = values.get("validation") or {}
    verdict = EMPTY if not validation else (
        ("[green]✓ ok[/] " if validation.get("ok") else "[yellow]✗ rejected[/] ") + _text(validation.get("reason")))
    usage = result.usage
    lines += [
        f"[bold]Draft:[/] {_text(values.get('draft'))}",
        f"[bold]Answer:[/] {_text(values.get('answer'))}",
        f"[bold]Validation:[/] {verdict}",
        f"[bold]Revisions:[/] {values.get('revisions', 0)}",
        f"[bold]Usage:[/] {counted(usage.llm_calls, 'model call')} ({usage.cached_calls} from cache), "
        f"{usage.input_tokens} in / {usage.output_tokens} out tokens, {dollars(usage.cost_usd)}",
        f"[bold]Status:[/] [{STATUS_STYLE.get(result.status, '')}]{result.status}[/]"
        + (f" · {escape(result.error)}" if result.error else ""),
        f"[bold]Next:[/] {_next(info.next) if info.next else 'nothing (the run ends here)'}",
    ]
    if info.edit:
        lines.append(f"[bold]Edit:[/] {_text(info.edit)}")
    return lines


def diff_table(diff) -> Table:
    same_thread = diff.from_thread == diff.to_thread
    title = (f"{diff.from_checkpoint[:13]} → {diff.to_checkpoint[:13]}" if same_thread else
             f"{escape(diff.from_thread)}@{diff.from_checkpoint[:13]} → "
             f"{escape(diff.to_thread)}@{diff.to_checkpoint[:13]}")
    table = Table(title=f"{title} · {len(diff.changes)} changes", title_justify="left")
    table.add_column("field", no_wrap=True)
    table.add_column("change", no_wrap=True)
    table.add_column("from")
    table.add_column("to")
    style = {"added": "green", "removed": "red", "changed": "yellow"}
    for change in diff.changes:
        table.add_row(escape(change.path), f"[{style[change.kind]}]{change.kind}[/]",
                      f"[red]{_text(change.old)}[/]" if change.kind != "added" else "",
                      f"[green]{_text(change.new)}[/]" if change.kind != "removed" else "")
    return table
