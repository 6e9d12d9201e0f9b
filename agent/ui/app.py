"""The web UI as a Starlette app: server-rendered pages and fragments (htmx swaps them), server-sent events
for runs, and a guard that keeps the page on this machine, on its token, and on its one database."""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from agent.api import AsyncAgent
from agent.errors import AgentError, BadInput, CheckpointNotFound, ThreadExists, ThreadNotFound
from agent.history import SHORT_ID, counted, parse_assignment
from agent.ui import sidebyside, views
from agent.ui.lanes import split_lines
from agent.ui.runs import Runs, sse
from agent.ui.store import PAGE_SIZE, Store, dumps

HERE = Path(__file__).parent
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
TOKEN_COOKIE = "agent_ui_token"
CSRF_HEADER = "x-agent-ui"


def _status_of(exc: AgentError) -> int:
    if isinstance(exc, (ThreadNotFound, CheckpointNotFound)):
        return 404
    # ThreadBusy (another run holds the thread) is on its way into agent.errors; match it by name till then.
    if isinstance(exc, ThreadExists) or type(exc).__name__ == "ThreadBusy":
        return 409
    return 400


class Guard:
    """Every request: the Host must be this machine's (unless a token guards a non-local bind: DNS rebinding
    cannot point another site's page here), the token must match when there is one, and anything that
    changes the database must carry this page's own header (another site's form cannot send it)."""

    def __init__(self, app, *, token: str | None, local: bool, csrf: str):
        self.app, self.token, self.local, self.csrf = app, token, local, csrf

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if self.token and request.query_params.get("token") and request.method == "GET":
            # The printed link carries the token once; from then on a cookie does, and the URL is clean.
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, request: Request) -> Response | None:
        host = _hostname(request.headers.get("host") or "")
        if self.local and host not in LOCAL_HOSTS:
            return Response(f"refused: this UI answers on 127.0.0.1 only, not '{host}'", status_code=403)
        if self.token and not self._has_token(request):
            return HTMLResponse("<h1>Token needed</h1><p>Open the link printed by <code>python -m agent ui</code> "
                                "(it ends in <code>?token=…</code>).</p>", status_code=401)
        if request.method not in ("GET", "HEAD"):
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), self.csrf.encode()):
                return Response("refused: this action must come from the UI's own page", status_code=403)
        return None

    def _has_token(self, request: Request) -> bool:
        offered = [request.cookies.get(TOKEN_COOKIE, ""), request.query_params.get("token", "")]
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            offered.append(auth[7:].strip())
        return any(o and hmac.compare_digest(o.encode(), self.token.encode()) for o in offered)


def _hostname(header: str) -> str:
    """The host part of a Host header: "127.0.0.1:8765" -> "127.0.0.1", "[::1]:8765" -> "[::1]"."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _short(checkpoint_id: str | None, length: int = SHORT_ID) -> str:
    return (checkpoint_id or "")[:length]


def _when(created_at: str | None) -> str:
    return created_at[:19].replace("T", " ") if created_at else "—"


def _money(usage: dict) -> str:
    if "cost_usd" not in usage:
        return "—"
    return f"${usage['cost_usd']:.6f}".rstrip("0").rstrip(".") if usage["cost_usd"] else "$0"


def _tokens(usage: dict) -> str:
    return f"{usage.get('input_tokens', 0):,} in / {usage.get('output_tokens', 0):,} out"


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def create_app(agent: AsyncAgent, *, write: bool = False, token: str | None = None, local: bool = True,
               db_label: str = "") -> Starlette:
    """The UI on an open AsyncAgent: `write` allows replay/fork/branch/resume; `token` guards every request."""
    store, runs = Store(agent), Runs()
    csrf = secrets.token_urlsafe(24)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.globals.update(short=_short, counted=counted, when=_when, money=_money, tokens=_tokens, as_json=_json,
                       dumps=dumps, write=write, csrf=csrf, db_label=db_label, kinds=views.KINDS, nodes=views.NODES,
                       spent=views.spent, usage_of=views.usage_of, urlencode=urlencode, page_size=PAGE_SIZE)

    def render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=code)

    def fragment(request: Request) -> bool:
        return request.headers.get("hx-request") == "true" and request.headers.get("hx-history-restore-request") != "true"

    def failure(request: Request, exc: AgentError) -> HTMLResponse:
        name = "_error.html" if fragment(request) else "error.html"
        return render(request, name, _status_of(exc), message=str(exc))

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except AgentError as exc:
                return failure(request, exc)

        return endpoint

    def needs_write(request: Request) -> HTMLResponse | None:
        if write:
            return None
        return render(request, "_error.html", 403,
                      message="this UI was started read-only: restart it with --write to replay, fork, branch "
                              "or resume")

    # -- pages ------------------------------------------------------------------------------------------

    async def home(request: Request) -> Response:
        params = request.query_params
        page = await store.threads(params.get("q", ""), params.get("status", ""), _int(params.get("page"), 1))
        context = {"page": page, "q": params.get("q", ""), "status": params.get("status", "")}
        if fragment(request) and request.headers.get("hx-target") == "threads":
            return render(request, "_threads.html", **context)
        return render(request, "threads.html", **context)

    async def thread_context(request: Request) -> dict[str, Any]:
        view = views.GraphView.from_query(request.query_params)
        record = await store.record(view.thread)
        selected = view.selected or record.head
        if not record.row(selected):
            selected = (await agent.state(view.thread, selected)).checkpoint.checkpoint_id
        view = views.GraphView(**{**view.__dict__, "selected": selected})
        found = await store.search(record, view.q) if view.q.strip() else frozenset()
        graph = views.build_graph(view, record.rows, found, record.errors, record.head)
        result = await agent.result(view.thread)  # status `running` while any process runs the thread
        return {"view": view, "record": record, "graph": graph, "thread": view.thread, "result": result,
                "running": view.thread in store.running or result.status == "running"}

    async def thread_page(request: Request) -> Response:
        context = await thread_context(request)
        context.update(await checkpoint_context(context["thread"], context["view"].selected))
        return render(request, "thread.html", **context)

    async def graph_fragment(request: Request) -> Response:
        return render(request, "_graph.html", **await thread_context(request))

    async def checkpoint_context(thread: str, checkpoint: str) -> dict[str, Any]:
        view = await agent.state(thread, checkpoint)
        record = await store.record(thread)
        row = record.row(view.checkpoint.checkpoint_id) or view.checkpoint
        return {"cp": view, "row": row, "step_spend": views.spent(views.usage_of(view.values),
                                                                   record.usage.get(row.parent_checkpoint_id or "")),
                "call": await store.model_call(record, row), "error": record.errors.get(row.checkpoint_id),
                "branch": views.branch_spend(split_lines(record.rows), record.usage, row.checkpoint_id),
                "can_resume": row.head and view.result.status != "done" and thread not in store.running
                and (await agent.result(thread)).status != "running",
                "record": record, "thread": thread}

    async def checkpoint_fragment(request: Request) -> Response:
        thread, checkpoint = request.query_params.get("t", ""), request.query_params.get("c", "")
        if not fragment(request):
            return RedirectResponse("/thread?" + urlencode({"t": thread, "c": checkpoint}), status_code=303)
        return render(request, "_checkpoint.html", **await checkpoint_context(thread, checkpoint))

    async def diff_page(request: Request) -> Response:
        params = request.query_params
        a, b = params.get("a", ""), params.get("b", "") or params.get("a", "")
        ac, bc = params.get("ac", ""), params.get("bc", "")
        if not a:
            raise BadInput("name the threads to compare: /diff?a=THREAD&ac=CHECKPOINT&b=THREAD&bc=CHECKPOINT")
        old = await agent.state(a, ac or None)
        new = await agent.state(b, bc or None)
        fields = sidebyside.compare(old.values, new.values)
        context = {"old": old, "new": new, "fields": fields, "a": a, "b": b,
                   "threads": await store.thread_ids(), "changed": sum(f.changes for f in fields)}
        if fragment(request) and request.headers.get("hx-target") == "detail":
            return render(request, "_diff.html", **context)
        return render(request, "diff.html", **context)

    async def export(request: Request) -> Response:
        thread, upto = request.query_params.get("t", ""), request.query_params.get("c") or None
        if upto:
            upto = (await agent.state(thread, upto)).checkpoint.checkpoint_id
        rows = await store.export_rows(thread, upto)  # an unknown thread is refused before anything is sent
        name = f"{thread}{'-' + upto[:SHORT_ID] if upto else ''}.history.json"
        safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in name)
        return StreamingResponse(store.export(thread, rows, upto), media_type="application/json",
                                 headers={"content-disposition": f'attachment; filename="{safe}"'})

    # -- actions ------------------------------------------------------------------------------------------

    async def edit_from(form, thread: str, checkpoint: str) -> dict[str, Any]:
        """The assignments a fork form asks for: the fields changed in place, then any path=value lines."""
        view = await agent.state(thread, checkpoint)
        values: dict[str, Any] = {}
        for name, text in form.multi_items():
            if not name.startswith("field:"):
                continue
            path = name[len("field:"):]
            if _json(_lookup(view.values, path)) != text:
                values[path] = text
        for line in (form.get("set") or "").splitlines():
            if line.strip():
                values.update([parse_assignment(line.strip())])
        return values

    async def fork_preview(request: Request) -> Response:
        if (refused := needs_write(request)) is not None:
            return refused
        form = await request.form()
        thread, checkpoint = form.get("t", ""), form.get("c", "")
        values = await edit_from(form, thread, checkpoint)
        as_node = form.get("as_node") or None
        old, new, nxt = await store.preview_edit(thread, checkpoint, values, as_node)
        changed = [f for f in sidebyside.compare(old, new) if f.kind != "same"]
        return render(request, "_preview.html", thread=thread, checkpoint=checkpoint, values=values,
                      as_node=as_node or "", fields=changed, next=nxt, will_run=views.will_run(nxt, new),
                      assignments=json.dumps(values, ensure_ascii=False))

    def start(request: Request, thread: str, what: str, work) -> HTMLResponse:
        if thread in store.running:  # one run per thread: a second would race the first for the same head
            return render(request, "_error.html", 409,
                          message=f"a run on thread '{thread}' is going on: wait for it to end, then act again")
        store.running.add(thread)
        store.forget(thread)

        def ended() -> None:
            store.running.discard(thread)
            store.forget(thread)

        run = runs.start(thread, what, work, ended)
        return render(request, "_run.html", run=run, thread=thread)

    async def fork(request: Request) -> Response:
        if (refused := needs_write(request)) is not None:
            return refused
        form = await request.form()
        thread, checkpoint = form.get("t", ""), form.get("c", "")
        values = _assignments(form.get("assignments")) if form.get("assignments") else \
            await edit_from(form, thread, checkpoint)
        as_node = form.get("as_node") or None
        await store.preview_edit(thread, checkpoint, values, as_node)  # a bad edit is refused before the run
        return start(request, thread, f"fork at {checkpoint[:SHORT_ID]}",
                     lambda on_event: agent.fork(thread, checkpoint, values, as_node=as_node, on_event=on_event))

    async def replay(request: Request) -> Response:
        if (refused := needs_write(request)) is not None:
            return refused
        form = await request.form()
        thread, checkpoint = form.get("t", ""), form.get("c", "")
        snapshot = await agent.state(thread, checkpoint)
        if not snapshot.checkpoint.next:
            raise BadInput(f"checkpoint {checkpoint[:SHORT_ID]} ends its run: nothing runs after it; "
                           "replay from an earlier checkpoint")
        return start(request, thread, f"replay from {checkpoint[:SHORT_ID]}",
                     lambda on_event: agent.replay(thread, checkpoint, on_event=on_event))

    async def resume(request: Request) -> Response:
        if (refused := needs_write(request)) is not None:
            return refused
        form = await request.form()
        thread = form.get("t", "")
        await agent.result(thread)
        return start(request, thread, "resume", lambda on_event: agent.resume(thread, on_event=on_event))

    async def branch(request: Request) -> Response:
        if (refused := needs_write(request)) is not None:
            return refused
        form = await request.form()
        thread, checkpoint, to = form.get("t", ""), form.get("c", ""), form.get("to", "")
        made = await agent.branch(thread, checkpoint, to)
        store.forget(thread)
        response = render(request, "_branched.html", made=made, thread=thread)
        response.headers["HX-Trigger"] = "graph-changed"
        return response

    async def run_events(request: Request) -> Response:
        run = runs.get(request.path_params["run"])
        if run is None:
            return Response("no such run (the server keeps the last 100)", status_code=404)

        async def stream():
            async for event in run.follow():
                yield sse(event)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await runs.wait_all()

    routes = [
        Route("/", guarded(home)),
        Route("/thread", guarded(thread_page)),
        Route("/graph", guarded(graph_fragment)),
        Route("/checkpoint", guarded(checkpoint_fragment)),
        Route("/diff", guarded(diff_page)),
        Route("/export", guarded(export)),
        Route("/fork/preview", guarded(fork_preview), methods=["POST"]),
        Route("/fork", guarded(fork), methods=["POST"]),
        Route("/replay", guarded(replay), methods=["POST"]),
        Route("/resume", guarded(resume), methods=["POST"]),
        Route("/branch", guarded(branch), methods=["POST"]),
        Route("/runs/{run}/events", run_events),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.store, app.state.runs = store, runs
    return Guard(app, token=token, local=local, csrf=csrf)


def _assignments(text: str) -> Any:
    """A fork's edits as the page sends them, JSON {path: value}; anything else is a bad request, not a 500."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"the edits are not JSON {{path: value}}: {exc}") from None


def _int(text: str | None, default: int) -> int:
    try:
        return int(text or default)
    except ValueError:
        return default


def _lookup(values: dict, path: str) -> Any:
    """The value at a fork path (1-based list indices), or None."""
    current: Any = values
    for part in path.split("."):
        if isinstance(current, list) and part.isdigit() and 1 <= int(part) <= len(current):
            current = current[int(part) - 1]
        elif isinstance(current, dict):
            current = current.get(part)
        else:
            return None
    return current

